"""Launch planner invariants (pure Python; the C++ twin is checked in test_plugin_build.py)."""

from __future__ import annotations

import itertools

import pytest

from ulsam_deploy.kernels import plan as P

SHAPES = [(n, c, h, w, g) for n, (c, g), (h, w) in itertools.product(
    (1, 2, 7, 64), ((96, 4), (160, 1), (512, 1), (512, 16), (16, 16), (1024, 2), (24, 8)),
    ((1, 1), (7, 7), (14, 14), (5, 33), (112, 112), (9, 1)))]


@pytest.mark.parametrize("dtype", P.DTYPES)
def test_plan_invariants(dtype):
    for n, c, h, w, g in SHAPES:
        for sm, l2 in ((16, 4 << 20), (132, 50 << 20), (1, 0)):
            pl = P.make_plan(n, c, h, w, g, dtype, sm_count=sm, l2_bytes=l2)
            gsz, hw = c // g, h * w
            var = P.VARIANTS[pl.variant]
            assert var.block_w == (8 if w <= 8 else 16)
            assert 1 <= pl.split <= min(P.MAX_SPLIT, gsz)
            assert pl.chunk * pl.split >= gsz and pl.chunk * (pl.split - 1) < gsz
            assert pl.chunk % var.out_c == 0 or pl.chunk == gsz
            assert pl.items == n * g * pl.split
            assert 1 <= pl.grid <= pl.items
            assert pl.workspace_bytes == pl.grid * hw * 4
            assert pl.workspace_bytes <= P.workspace_bytes(n, c, h, w, g, dtype)
            assert pl.num_warps == var.num_warps


def test_split_only_when_groups_are_scarce():
    assert P.make_plan(1, 512, 14, 14, 1, sm_count=132).split == P.MAX_SPLIT
    assert P.make_plan(64, 512, 14, 14, 4, sm_count=132).split == 1
    assert P.make_plan(1, 8, 14, 14, 8, sm_count=132).split == 1  # G=1: nothing to split


def test_workspace_is_monotone_in_batch_and_spatial():
    for c, g in ((96, 4), (512, 1), (16, 16)):
        for dtype in P.DTYPES:
            prev_n = 0
            for n in (1, 2, 3, 8, 64, 256):
                cur = P.workspace_bytes(n, c, 14, 14, g, dtype)
                assert cur >= prev_n
                prev_n = cur
            for n in (1, 64):
                prev = 0
                for s in range(1, 120):
                    cur = P.workspace_bytes(n, c, s, s, g, dtype)
                    assert cur >= prev
                    assert P.workspace_bytes(n, c, s, s + 1, g, dtype) >= cur
                    assert P.workspace_bytes(n, c, s + 1, s, g, dtype) >= cur
                    prev = cur


def test_workspace_limit_caps_grid_and_errors_below_one_row():
    pl = P.make_plan(64, 96, 14, 14, 4, workspace_limit=3 * 196 * 4 + 5)
    assert pl.grid == 3
    with pytest.raises(ValueError):
        P.make_plan(1, 96, 14, 14, 4, workspace_limit=196 * 4 - 1)


@pytest.mark.parametrize("bad", [(1, 10, 4, 4, 3), (0, 8, 4, 4, 2), (1, 8, 0, 4, 2)])
def test_bad_shapes_rejected(bad):
    with pytest.raises(ValueError):
        P.make_plan(*bad)
    with pytest.raises(ValueError):
        P.workspace_bytes(*bad)


def test_variant_table_is_stable():
    """The C++ tables and the shipped PTX are indexed by these ids: changing them needs a
    regenerated ptx/ folder (test_kernel_aot checks the manifest)."""
    assert [v.name for v in P.VARIANTS] == ["w8_r8_c16", "w8_r8_c4", "w16_r16_c4", "w16_r16_c1"]
