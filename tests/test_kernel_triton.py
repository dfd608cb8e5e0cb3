"""The fused Triton kernel against the NumPy oracle (ulsam_deploy.kernels.reference).

Without a GPU the kernel runs in Triton's CPU interpreter (TRITON_INTERPRET=1, ~0.05-0.3 s per
program instance), so shapes and grids are kept small; the grid is forced small where the
planner would launch many programs. With a CUDA GPU the same tests run on the GPU.

The cheap default set covers g in {1, 4, 8, 16}, G from 1 to 512, 1x1 to 112x112, odd sizes,
fp32/fp16, batch > 1, every compiled tile variant, the channel split, the persistent loop,
the multi-strip / multi-column-tile paths and all four ReLU flag combinations. `slow` adds
bigger versions of the 112x112 and G=512 cases (still run in CI, ~1 min).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

HAVE_CUDA = torch.cuda.is_available()


from ulsam_deploy.kernels import plan as P  # noqa: E402
from ulsam_deploy.kernels import reference as R  # noqa: E402
from ulsam_deploy.kernels import triton_kernel as SA  # noqa: E402

if not HAVE_CUDA and not SA.is_interpreted():
    pytest.skip("no GPU and Triton was imported without TRITON_INTERPRET=1 (tests/conftest.py sets it)",
                allow_module_level=True)

DEVICE = "cuda" if HAVE_CUDA else "cpu"
EPS32 = float(np.finfo(np.float32).eps)


def make_input(n, c, h, w, dtype, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(0.0, 1.0, (n, c, h, w)) + offset).astype(np.float32)
    return torch.from_numpy(x).to(dtype)


def assert_matches(y, x, params, *, what=""):
    """y (kernel) vs the float64 oracle; checks y and, separately, the attention part y - x."""
    xf = x.detach().float().cpu().numpy().astype(np.float64)
    yf = y.detach().float().cpu().numpy().astype(np.float64)
    ref = R.subspace_attention_numpy(xf, **params.as_kwargs(), compute_dtype=np.float64)
    assert yf.shape == ref.shape
    assert np.isfinite(yf).all(), f"{what}: non-finite output"
    if y.dtype == torch.float16:
        # fp32 math then one rounding to fp16: within half an fp16 ulp (+ fp32 noise)
        tol = 2.0 ** -11 * np.abs(ref) * (1 + 1e-3) + 1e-6
    else:
        # a few fp32 ulps of y, plus a relative bound on the attention part x*A
        tol = 4 * EPS32 * np.abs(ref) + 1e-5 * np.abs(ref - xf).max() + 1e-12
    err = np.abs(yf - ref)
    bad = err > tol
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} elements off; max err "
                           f"{err.max():.3g}, worst at {np.unravel_index(np.argmax(err - tol), err.shape)}")
    if y.dtype == torch.float32:
        att = ref - xf
        att_err = np.abs((yf - xf) - att).max()
        assert att_err <= 1e-4 * np.abs(att).max() + 8 * EPS32 * np.abs(ref).max(), (
            f"{what}: attention part off by {att_err:.3g} (max {np.abs(att).max():.3g})")


def run_case(n, c, h, w, groups, dtype, relu=(1, 1), seed=0, **overrides):
    params = R.random_params(c, groups, seed=seed + 1, relu_dw=bool(relu[0]),
                             relu_pw=bool(relu[1]), logit_scale=3.0)
    x = make_input(n, c, h, w, dtype, seed=seed).to(DEVICE)
    y, pl = SA.subspace_attention(x, **params.as_kwargs(), return_plan=True, **overrides)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_matches(y, x, params, what=f"N{n} C{c} {h}x{w} g{groups} {dtype} {overrides}")
    return pl


F32, F16 = torch.float32, torch.float16

# (N, C, H, W, groups, dtype, (relu_dw, relu_pw), launcher overrides)
CASES = [
    pytest.param(1, 96, 14, 14, 4, F32, (1, 1), {}, id="mv2-96@14-g4-split"),
    pytest.param(2, 160, 7, 7, 1, F32, (1, 1), {"grid": 4, "split": 3}, id="mv2-160@7-g1-G160-b2"),
    pytest.param(1, 32, 14, 14, 8, F16, (1, 1), {}, id="g8-G4-fp16"),
    pytest.param(2, 16, 5, 6, 16, F32, (0, 0), {}, id="g16-G1-plain"),
    pytest.param(1, 16, 1, 1, 4, F32, (1, 1), {}, id="1x1"),
    pytest.param(1, 8, 1, 9, 2, F32, (0, 1), {}, id="1x9"),
    pytest.param(1, 8, 9, 1, 2, F16, (1, 0), {}, id="9x1-fp16"),
    pytest.param(1, 12, 3, 5, 4, F16, (1, 0), {}, id="3x5-fp16"),
    pytest.param(2, 8, 17, 33, 2, F32, (0, 1), {"grid": 2}, id="17x33-col-tiles"),
    pytest.param(1, 20, 20, 13, 1, F32, (1, 1), {}, id="20x13-strips-rmw"),
    pytest.param(3, 24, 9, 7, 3, F32, (0, 0), {"grid": 3}, id="9x7-small-tile-b3"),
    pytest.param(2, 32, 6, 6, 4, F32, (1, 1), {"grid": 3, "split": 2}, id="persistent+split"),
    pytest.param(1, 512, 3, 3, 1, F32, (1, 1), {"grid": 1, "split": 2}, id="G512-3x3"),
    pytest.param(1, 2, 112, 112, 2, F32, (1, 1), {"split": 1}, id="112x112-G1"),
    pytest.param(1, 64, 13, 11, 16, F16, (0, 0), {"grid": 4}, id="13x11-g16-fp16-plain"),
]


@pytest.mark.slow
@pytest.mark.parametrize("n,c,h,w,groups,dtype,relu,over", CASES)
def test_kernel_matches_reference(n, c, h, w, groups, dtype, relu, over):
    run_case(n, c, h, w, groups, dtype, relu, **over)


@pytest.mark.slow
@pytest.mark.parametrize("variant", range(len(P.VARIANTS)))
@pytest.mark.parametrize("dtype", [F32, F16])
def test_every_compiled_variant(variant, dtype):
    """Each tile family the AOT PTX ships is correct, incl. W wider than its BLOCK_W."""
    run_case(2, 12, 7, 11, 3, dtype, (1, 1), seed=variant, variant=variant, grid=3)


def test_padding_never_wins():
    """All-negative input, no ReLUs: zero padding would win the 3x3 max at the borders."""
    c, g = 8, 2
    params = R.SubspaceAttentionParams(g, np.full(c, 0.9, np.float32), np.zeros(c, np.float32),
                                       np.linspace(0.5, 1.5, c).astype(np.float32),
                                       np.zeros(g, np.float32), relu_dw=False, relu_pw=False)
    x = (-1.0 - torch.rand(1, c, 6, 5, generator=torch.Generator().manual_seed(0))).to(DEVICE)
    y = SA.subspace_attention(x, **params.as_kwargs())
    assert_matches(y, x, params, what="negative input")
    # the same check does see the difference a zero-padded pooling would make
    xn = x.cpu().numpy().astype(np.float64)
    a = xn * 0.9
    pz = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))  # zero padding: the wrong semantics
    pooled = np.max([pz[:, :, dy:dy + 6, dx:dx + 5] for dy in range(3) for dx in range(3)], axis=0)
    lg = (pooled.reshape(1, g, c // g, 6, 5) * params.pw_weight.reshape(1, g, c // g, 1, 1)).sum(2)
    e = np.exp(lg.reshape(1, g, -1) - lg.reshape(1, g, -1).max(-1, keepdims=True))
    att = (e / e.sum(-1, keepdims=True)).reshape(1, g, 1, 6, 5)
    wrong = (xn.reshape(1, g, c // g, 6, 5) * (1 + att)).reshape(x.shape)
    assert np.abs(wrong - y.cpu().numpy()).max() > 1e-3


def test_negative_and_zero_scales():
    c, g = 12, 3
    params = R.random_params(c, g, seed=5)
    params.dw_scale[::3] = -np.abs(params.dw_scale[::3])
    params.dw_scale[1] = 0.0
    x = make_input(2, c, 5, 7, F32, seed=2).to(DEVICE)
    y = SA.subspace_attention(x, **params.as_kwargs(), grid=2)
    assert_matches(y, x, params, what="negative/zero scales")


@pytest.mark.parametrize("field,index,factor", [("dw_scale", 3, -1.0), ("dw_shift", 5, 1.5),
                                                 ("pw_weight", 0, 1.1)])
def test_checks_detect_a_perturbed_constant(field, index, factor):
    """The comparison is tight enough to catch one wrong folded constant."""
    c, g = 8, 2
    params = R.random_params(c, g, seed=2, logit_scale=3.0)
    x = make_input(1, c, 6, 6, F32, seed=3).to(DEVICE)
    att = R.attention_maps_numpy(x.cpu().numpy(), **params.as_kwargs()).reshape(g, -1)
    assert (att.max(1) > 2 * att.min(1)).all(), "precondition: no flat attention map"
    bad = R.SubspaceAttentionParams(**params.as_kwargs())
    arr = getattr(bad, field).copy()
    arr[index] = arr[index] * factor + (0.3 if factor == 1.5 else 0.0)
    setattr(bad, field, arr)
    y = SA.subspace_attention(x, **bad.as_kwargs())
    assert_matches(y, x, bad, what="perturbed constants, own reference")
    with pytest.raises(AssertionError):
        assert_matches(y, x, params, what="perturbed constants vs original")


def test_fp16_output_is_not_just_x():
    """fp16 keeps the attention term (y != x), so the fp16 tolerance is meaningful."""
    pl = R.random_params(16, 4, seed=1, logit_scale=3.0)
    x = make_input(1, 16, 7, 7, F16, seed=1, offset=2.0).to(DEVICE)
    y = SA.subspace_attention(x, **pl.as_kwargs())
    assert (y != x).float().mean() > 0.5
    assert_matches(y, x, pl, what="fp16")


def test_torch_reference_agrees_with_numpy():
    pl = R.random_params(24, 4, seed=2)
    x = make_input(2, 24, 7, 9, F32, seed=4)
    a = R.subspace_attention_numpy(x.numpy(), **pl.as_kwargs())
    b = R.subspace_attention_torch(x, **pl.as_kwargs()).numpy()
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
    b16 = R.subspace_attention_torch(x.half(), **pl.as_kwargs())
    assert b16.dtype == torch.float16


def test_launcher_rejects_bad_input():
    pl = R.random_params(8, 2)
    with pytest.raises(ValueError):
        SA.subspace_attention(torch.zeros(1, 8, 4, device=DEVICE), **pl.as_kwargs())
    with pytest.raises(ValueError):
        SA.subspace_attention(torch.zeros(1, 8, 4, 4, device=DEVICE), 3, pl.dw_scale, pl.dw_shift,
                              pl.pw_weight, np.zeros(3, np.float32))
    with pytest.raises(ValueError):
        SA.subspace_attention(torch.zeros(1, 8, 4, 4, dtype=torch.float64, device=DEVICE),
                              **pl.as_kwargs())
    with pytest.raises(ValueError):
        SA.subspace_attention(torch.zeros(1, 8, 4, 4, device=DEVICE), 2, pl.dw_scale[:4],
                              pl.dw_shift, pl.pw_weight, pl.pw_bias)


@pytest.mark.slow
@pytest.mark.parametrize("n,c,h,w,groups,dtype,relu,over", [
    pytest.param(1, 64, 112, 112, 4, F16, (1, 1), {"grid": 2, "split": 1}, id="112x112-G16-fp16"),
    pytest.param(1, 512, 14, 14, 1, F32, (1, 1), {"grid": 2, "split": 2}, id="G512-14x14-split"),
    pytest.param(2, 1024, 7, 7, 2, F16, (0, 0), {"grid": 2, "split": 1}, id="G512-7x7-fp16-b2"),
    pytest.param(2, 160, 7, 7, 8, F32, (1, 1), {"grid": 4}, id="mv2-160@7-g8"),
])
def test_kernel_matches_reference_slow(n, c, h, w, groups, dtype, relu, over):
    run_case(n, c, h, w, groups, dtype, relu, **over)


@pytest.mark.parametrize("n,c,h,w,groups,dtype", [(2, 24, 7, 7, 4, F16), (1, 32, 10, 13, 2, F32)])
def test_qdp_launch_configuration(n, c, h, w, groups, dtype):
    """The launch the tensorrt.plugin AOT path encodes (grid = N*groups, split 1, a separate
    [N*groups, H*W] fp32 workspace output) computes the op."""
    from ulsam_deploy.kernels.qdp_plugin import qdp_launch_config

    cfg = qdp_launch_config(n, c, h, w, groups)
    params = R.random_params(c, groups, seed=11, logit_scale=3.0)
    x = make_input(n, c, h, w, dtype, seed=5).to(DEVICE)
    ws = torch.empty(cfg["ws_shape"], dtype=torch.float32, device=DEVICE)
    y, pl = SA.subspace_attention(x, **params.as_kwargs(), split=cfg["split"], grid=cfg["grid"],
                                  workspace=ws.view(-1), return_plan=True)
    assert (pl.grid, pl.items, pl.split, pl.chunk) == (cfg["grid"], cfg["items"], 1, cfg["chunk"])
    assert_matches(y, x, params, what="QDP launch")


def test_small_workspace_caps_the_grid():
    """Like the C++ launcher: a workspace of k rows runs k persistent programs."""
    params = R.random_params(16, 4, seed=3, logit_scale=3.0)
    x = make_input(2, 16, 5, 6, F32, seed=8).to(DEVICE)
    ws = torch.empty(2 * 30 + 7, dtype=torch.float32, device=DEVICE)
    y, pl = SA.subspace_attention(x, **params.as_kwargs(), workspace=ws, return_plan=True)
    assert pl.grid == 2 and pl.items >= 8
    assert_matches(y, x, params, what="2-row workspace")
    with pytest.raises(ValueError):
        SA.subspace_attention(x, **params.as_kwargs(), workspace=ws[:29])


def _fp16_model(x16, params, *, acc16=False, store16=False, sum16=False):
    """NumPy model of an fp16 kernel that does the named steps in fp16 (everything else fp32):
    ``acc16`` sums the logits over channels in fp16, ``store16`` keeps the logits in fp16,
    ``sum16`` sums the softmax exponentials in fp16. All flags False is the kernel's contract."""
    n, c, h, w = x16.shape
    g = params.groups
    gs = c // g
    x = x16.astype(np.float32)
    a = params.dw_scale[None, :, None, None] * x + params.dw_shift[None, :, None, None]
    a = np.maximum(a, 0) if params.relu_dw else a
    pad = np.full((n, c, h + 2, w + 2), -np.inf, np.float32)
    pad[:, :, 1:-1, 1:-1] = a
    p = np.max([pad[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)
    p = p.reshape(n, g, gs, h * w)
    wt = params.pw_weight.reshape(g, gs)
    if acc16:
        lg = np.zeros((n, g, h * w), np.float16)
        for ch in range(gs):
            lg = (lg + (wt[None, :, ch, None] * p[:, :, ch, :]).astype(np.float16)).astype(np.float16)
        lg = lg.astype(np.float32)
    else:
        lg = np.einsum("ngcp,gc->ngp", p, wt)
    lg = lg + params.pw_bias[None, :, None]
    lg = np.maximum(lg, 0) if params.relu_pw else lg
    if store16:
        lg = lg.astype(np.float16).astype(np.float32)
    e = np.exp(lg - lg.max(-1, keepdims=True))
    if sum16:
        e = e.astype(np.float16)
        s = np.zeros((n, g, 1), np.float16)
        for i in range(h * w):
            s = (s + e[..., i:i + 1]).astype(np.float16)
        att = e.astype(np.float32) / s.astype(np.float32)
    else:
        att = e / e.sum(-1, keepdims=True)
    return (x.reshape(n, g, gs, h * w) * (1 + att[:, :, None, :])).reshape(x.shape).astype(np.float16)


@pytest.mark.slow
def test_fp16_kernel_accumulates_the_softmax_in_fp32():
    """fp16 engines run the fp16 kernel (fp16 in/out). Its logits, softmax max/sum and 1 + A must
    stay fp32: on this peaked 32x32, G=64 case a model that accumulates the logits, stores them or
    sums the exponentials in fp16 misses the half-ulp bound (each shown below), the kernel meets it."""
    c, g = 128, 2
    params = R.random_params(c, g, seed=7, logit_scale=6.0)
    x16 = np.random.default_rng(3).normal(0.0, 1.0, (1, c, 32, 32)).astype(np.float16)
    x = torch.from_numpy(x16)
    assert_matches(torch.from_numpy(_fp16_model(x16, params)), x, params, what="fp32-inside model")
    for flag in ("acc16", "store16", "sum16"):
        with pytest.raises(AssertionError):
            assert_matches(torch.from_numpy(_fp16_model(x16, params, **{flag: True})), x, params, what=flag)
    y = SA.subspace_attention(x.to(DEVICE), **params.as_kwargs(), split=1, grid=2)
    assert y.dtype == torch.float16
    assert_matches(y, x, params, what="fp16 kernel")
