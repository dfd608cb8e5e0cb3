"""Launch planning for the fused subspace-attention kernel.

Everything a launcher must decide before calling the kernel lives here: which compiled tile
variant to use, how many programs share one group (the channel split), the persistent grid, and
the workspace size. It is pure integer arithmetic with no torch/triton dependency so that

- the torch launcher (:mod:`ulsam_deploy.kernels.triton_kernel`),
- the AOT generator (:mod:`ulsam_deploy.kernels.aot`, which compiles :data:`VARIANTS`),
- the C++ launcher (``plugins/subspace_attention/launcher.cpp``, ``ulsam_sa_plan``), and
- the ``tensorrt.plugin`` glue

all make the same choice. ``tests/test_plugin_build.py`` runs the compiled C++ planner on the
host and compares it with :func:`make_plan` for a grid of shapes - keep the two in sync.

Kernel work decomposition (see ``docs/kernel.md``):

* one *item* = (batch n, group k, channel-split s). The item computes the logits of its whole
  group (pass A, a sliding 3-row window over ``[BLOCK_C, BLOCK_W]`` tiles), the softmax
  statistics (pass B) and writes ``y`` for its share of the group's channels (pass C).
* ``split`` items per group trade redundant logit work for parallelism when ``N * groups`` is
  small compared with the number of SMs (batch 1).
* the grid is persistent (``grid <= items``; programs loop over items) so that the number of
  group slices in flight fits the L2 cache (pass C re-reads ``x`` and should hit L2) and so that
  any workspace size >= one row works.
* workspace: one fp32 row of ``H*W`` logits per *program* (not per item).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: Tile families. A pass-A tile is [BLOCK_C channels, ROWS strips x BLOCK_W columns]; the
#: "row-tile" width ROWS*BLOCK_W is 64 for BLOCK_W=8 (a whole <=8x8 image) and 256 for
#: BLOCK_W=16 (a whole <=16x16 image; wider images loop over 16-column tiles, taller ones
#: split the rows into 16 strips).
BIG_TILE = 1024  # 8 warps, 4 lanes per thread (8 per thread spills: ptxas caps at 128 regs)
SMALL_TILE = 256  # 2 warps, 4 lanes per thread (groups of very few channels)
BIG_WARPS = 8
SMALL_WARPS = 2
BLOCK_WS = (8, 16)

#: Cap on the channel split (redundant logit computations per group).
MAX_SPLIT = 16
#: Programs per SM the channel split aims for (only when N*groups is below that).
SPLIT_CTAS_PER_SM = 2
#: Minimum persistent programs per SM (big tiles / small tiles): >= 8 resident warps per SM.
CTAS_PER_SM_BIG = 2
CTAS_PER_SM_SMALL = 4
#: Defaults used when the device is unknown (CPU interpreter).
DEFAULT_SM_COUNT = 132
DEFAULT_L2_BYTES = 50 * 1024 * 1024
#: Workspace sizing is device independent and monotone in N, H, W (TensorRT sizes the
#: workspace once for the profile's max shape at build time; any smaller shape must fit):
#: bytes = min(N*groups*MAX_SPLIT*HW*4, max(WS_MIN_ROWS*HW*4, (WS_L2_REF_BYTES // (G*elem))*4 + HW*4))
#: (each term is non-decreasing in N and HW, hence so is the min/max; the second one gives at
#: least ``WS_L2_REF_BYTES / slice_bytes`` rows).
WS_MIN_ROWS = 1024
WS_L2_REF_BYTES = 32 * 1024 * 1024

DTYPES = ("fp32", "fp16")
DTYPE_CODES = {"fp32": 0, "fp16": 1}
ELEM_BYTES = {"fp32": 4, "fp16": 2}


@dataclass(frozen=True)
class Variant:
    """One compiled specialization of the kernel (per dtype)."""

    block_w: int
    rows: int
    block_c: int
    out_c: int
    num_warps: int

    @property
    def row_tile(self) -> int:
        """Positions per pass-A/pass-C tile row (= OUT_HW)."""
        return self.rows * self.block_w

    @property
    def name(self) -> str:
        return f"w{self.block_w}_r{self.rows}_c{self.block_c}"

    @property
    def constexprs(self) -> dict:
        return {"BLOCK_W": self.block_w, "ROWS": self.rows, "BLOCK_C": self.block_c,
                "OUT_C": self.out_c}


def _variant(block_w: int, small: bool) -> Variant:
    tile = SMALL_TILE if small else BIG_TILE
    row_tile = 64 if block_w == 8 else 256
    block_c = max(1, tile // row_tile)
    return Variant(block_w, row_tile // block_w, block_c, block_c,
                   SMALL_WARPS if small else BIG_WARPS)


#: All compiled variants, in a fixed order (index = variant id in the C++ tables).
VARIANTS: tuple[Variant, ...] = tuple(_variant(bw, small) for bw in BLOCK_WS for small in (False, True))


def next_pow2(v: int) -> int:
    p = 1
    while p < v:
        p *= 2
    return p


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def select_variant(channels_per_group: int, width: int) -> int:
    """Index into :data:`VARIANTS` for a group size and image width."""
    bw = min(BLOCK_WS[-1], max(BLOCK_WS[0], next_pow2(width)))
    big = BLOCK_WS.index(bw) * 2
    # small tile when the big tile's channel axis would be less than half used
    if 2 * channels_per_group < VARIANTS[big].block_c:
        return big + 1
    return big


@dataclass(frozen=True)
class Plan:
    variant: int
    split: int  # programs (items) per group
    chunk: int  # channels written per item
    items: int  # N * groups * split
    grid: int  # persistent programs launched
    workspace_bytes: int  # grid * H * W * 4
    num_warps: int

    def as_dict(self) -> dict:
        return asdict(self)


def make_plan(n: int, c: int, h: int, w: int, groups: int, dtype: str = "fp32", *,
              sm_count: int | None = None, l2_bytes: int | None = None,
              workspace_limit: int | None = None, split: int | None = None,
              grid: int | None = None) -> Plan:
    """Plan one launch. ``split``/``grid`` override the heuristics (tests use that to exercise
    the persistent loop and the channel split). ``workspace_limit`` (bytes) caps the grid."""
    if min(n, c, h, w, groups) < 1 or c % groups:
        raise ValueError(f"bad shape N={n} C={c} H={h} W={w} groups={groups}")
    if dtype not in ELEM_BYTES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    sm = sm_count if sm_count and sm_count > 0 else DEFAULT_SM_COUNT
    l2 = l2_bytes if l2_bytes and l2_bytes > 0 else DEFAULT_L2_BYTES
    g_size = c // groups
    hw = h * w
    vid = select_variant(g_size, w)
    var = VARIANTS[vid]
    ctas_per_sm = CTAS_PER_SM_SMALL if var.num_warps == SMALL_WARPS else CTAS_PER_SM_BIG
    target = sm * ctas_per_sm
    ng = n * groups
    if split is None:  # redundant logit work buys parallelism only when groups are scarce
        split = min(MAX_SPLIT, cdiv(g_size, var.out_c), max(1, (sm * SPLIT_CTAS_PER_SM) // ng))
    split = max(1, min(split, g_size))
    chunk = cdiv(g_size, split)
    chunk = min(g_size, cdiv(chunk, var.out_c) * var.out_c)
    split = cdiv(g_size, chunk)
    items = ng * split
    slice_bytes = g_size * hw * ELEM_BYTES[dtype]
    if grid is None:
        grid = max(target, (l2 // 2) // slice_bytes)
    limit = workspace_bytes(n, c, h, w, groups, dtype) if workspace_limit is None else workspace_limit
    if limit < hw * 4:
        raise ValueError(f"workspace of {limit} bytes is below one logit row ({hw * 4} bytes)")
    grid = max(1, min(grid, items, limit // (hw * 4)))
    return Plan(vid, split, chunk, items, grid, grid * hw * 4, var.num_warps)


def workspace_bytes(n: int, c: int, h: int, w: int, groups: int, dtype: str = "fp32") -> int:
    """Workspace (bytes) that always suffices for this shape on any device.

    Device independent and non-decreasing in ``n``, ``h`` and ``w`` so that a size computed for
    a profile's max shape covers every smaller one. C++ twin: ``ulsam_sa_workspace_size``."""
    if min(n, c, h, w, groups) < 1 or c % groups:
        raise ValueError(f"bad shape N={n} C={c} H={h} W={w} groups={groups}")
    if dtype not in ELEM_BYTES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    hw = h * w
    per_hw = WS_L2_REF_BYTES // ((c // groups) * ELEM_BYTES[dtype])
    return min(n * groups * MAX_SPLIT * hw * 4, max(WS_MIN_ROWS * hw * 4, per_hw * 4 + hw * 4))
