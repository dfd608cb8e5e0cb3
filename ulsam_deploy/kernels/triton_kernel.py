"""The fused ULSAM subspace-attention Triton kernel (single source of truth) + torch launcher.

Math: see :mod:`ulsam_deploy.kernels.reference`. Design (full discussion in ``docs/kernel.md``):

Work item = (batch ``n``, group ``k``, channel-split index ``s``); programs are persistent and
loop over items. For one item the program runs three passes:

A. **logits** - for each column tile (``BLOCK_W`` >= W in practice) and each channel block
   (``BLOCK_C`` channels) it slides a 3-row window down the image: per row it loads row ``r+1``
   three times (columns -1/0/+1, all L1 hits but the centre), forms the horizontal 3-max, and
   takes the vertical max with the two previous rows kept in registers. So ``x`` is read once
   from DRAM and 3x from L1, instead of 9x for a naive 3x3 gather. The depthwise affine+ReLU is
   applied *after* pooling (it is monotone per channel: max for a positive scale, min via sign
   flip for a negative one), i.e. once per element instead of 9 times. The channel-weighted
   sum for row ``r`` is accumulated into a per-program fp32 workspace row (read-modify-write
   across channel blocks, separated by a CTA barrier).
B. **softmax statistics** - one online pass (running max + rescaled sum, exp2) over the
   ``H*W`` logits of the workspace row (L1/L2 resident).
C. **output** - for each block of ``OUT_HW`` positions compute ``1 + A`` once and stream the
   item's channels: ``y = x * (1 + A)``. This second read of ``x`` is meant to hit L2: the
   planner bounds the persistent grid so that the group slices in flight fit in half the L2.

fp16 in/out, fp32 everywhere inside. Per-element offsets are int32 relative to a per-group
int64 base, so ``G*H*W`` must be < 2**31 (far above any real layer).

Runtime ``int`` arguments are never specialised (the AOT PTX takes them as ``.param .u32``).

Parameter order (:data:`PARAM_ORDER`, TensorRT's AOT-plugin convention: inputs, int32 scalars,
outputs): ``x, dw_scale, dw_shift, pw_weight, pw_bias, G, H, W, groups, n_items, split, chunk,
relu_dw, relu_pw, y, ws`` and then - added by Triton itself - two hidden trailing scratch
pointers (global scratch, profile scratch), which a raw ``cuLaunchKernel`` must pass (NULL is
fine: this kernel requests no scratch; the QDP glue strips them from the PTX instead).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ulsam_deploy.kernels import plan as _plan

LOG2E = tl.constexpr(1.4426950408889634)

# Order of the kernel's runtime parameters (constexprs excluded). Shared with aot.py and the C++
# launcher; tests check it against the compiled signature.
# Calling convention = TensorRT's AOT plugin convention (input pointers, int32 scalars, output
# pointers), so the very same PTX serves the C++ launcher and tensorrt.plugin (QDP).
PARAM_ORDER = (
    ("x_ptr", "ptr_io"),
    ("dw_scale_ptr", "*fp32"), ("dw_shift_ptr", "*fp32"),
    ("pw_weight_ptr", "*fp32"), ("pw_bias_ptr", "*fp32"),
    ("G", "i32"), ("H", "i32"), ("W", "i32"), ("groups", "i32"), ("n_items", "i32"),
    ("split", "i32"), ("chunk", "i32"), ("relu_dw", "i32"), ("relu_pw", "i32"),
    ("y_ptr", "ptr_io"), ("ws_ptr", "*fp32"),
)
CONSTEXPR_NAMES = ("BLOCK_W", "ROWS", "BLOCK_C", "OUT_C")
KERNEL_NAME = "ulsam_subspace_attention_kernel"


@triton.jit
def _hmax_rows(xg, ch_off, chm, sg, rows, H, W, cols):
    """Horizontal 3-max of the sign-flipped input for a [BLOCK_C, ROWS*BLOCK_W] tile whose
    lanes sit at (``rows``, ``cols``) (both per-lane vectors).

    Out-of-image positions (row or column) give -inf, so padding never wins."""
    rok = (rows >= 0) & (rows < H)
    base = ch_off[:, None] + (rows * W + cols)[None, :]
    sgb = sg[:, None]
    m_c = chm[:, None] & (rok & (cols < W))[None, :]
    v = tl.load(xg + base, mask=m_c, other=0.0).to(tl.float32)
    h = tl.where(m_c, v * sgb, float("-inf"))
    m_l = chm[:, None] & (rok & (cols >= 1) & (cols <= W))[None, :]
    v = tl.load(xg + base - 1, mask=m_l, other=0.0).to(tl.float32)
    h = tl.maximum(h, tl.where(m_l, v * sgb, float("-inf")))
    m_r = chm[:, None] & (rok & (cols + 1 < W))[None, :]
    v = tl.load(xg + base + 1, mask=m_r, other=0.0).to(tl.float32)
    h = tl.maximum(h, tl.where(m_r, v * sgb, float("-inf")))
    return h


@triton.jit
def ulsam_subspace_attention_kernel(
    x_ptr, dw_scale_ptr, dw_shift_ptr, pw_weight_ptr, pw_bias_ptr,
    G, H, W, groups, n_items, split, chunk, relu_dw, relu_pw,
    y_ptr, ws_ptr,
    BLOCK_W: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr, OUT_C: tl.constexpr,
):
    TW: tl.constexpr = ROWS * BLOCK_W  # lanes of one tile row = positions per pass-C block
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    HW = H * W
    hs = (H + ROWS - 1) // ROWS  # rows per strip
    offs_t = tl.arange(0, TW)
    strip = offs_t // BLOCK_W
    col_in = offs_t % BLOCK_W
    row0 = strip * hs  # first row of each lane's strip
    offs_c = tl.arange(0, BLOCK_C)
    offs_oc = tl.arange(0, OUT_C)
    # hs == 1 (the whole image fits one tile row, e.g. 14x14 with BLOCK_W=16): accumulate the
    # logits in registers across channel blocks. Otherwise read-modify-write the workspace row.
    # Expressed as column limits because scalar predicates cannot be used as masks everywhere.
    lim_reg = tl.where(hs == 1, W, 0)
    lim_rmw = W - lim_reg
    wsg = ws_ptr + pid.to(tl.int64) * HW  # this program's logit row
    for item in range(pid, n_items, nprog):
        grp = item // split  # = n * groups + k
        s_idx = item - grp * split
        k = grp % groups
        xoff = grp.to(tl.int64) * G * HW  # x[n, k*G, 0, 0]
        xg = x_ptr + xoff
        yg = y_ptr + xoff
        cbase = k * G  # first channel of the group in the constant arrays
        bias = tl.load(pw_bias_ptr + k)

        # ---- pass A: raw logits sum_c w_c * maxpool(relu(s_c x_c + t_c)) -> ws row ----
        for w0 in range(0, W, BLOCK_W):
            cols = w0 + col_in
            acc = tl.zeros([TW], tl.float32)
            for c0 in range(0, G, BLOCK_C):
                tl.debug_barrier()  # previous channel block / previous item done with ws
                ch = c0 + offs_c
                chm = ch < G
                sc = tl.load(dw_scale_ptr + cbase + ch, mask=chm, other=1.0)
                sh = tl.load(dw_shift_ptr + cbase + ch, mask=chm, other=0.0)
                wt = tl.load(pw_weight_ptr + cbase + ch, mask=chm, other=0.0)
                # relu(s*x+t) is monotone in x: its window max is s*max(x)+t for s >= 0 and
                # s*min(x)+t = |s|*max(-x)+t for s < 0, so pool sign-flipped x, affine once.
                sg = tl.where(sc >= 0, 1.0, -1.0)
                sa = tl.abs(sc)
                ch_off = ch * HW
                lim_first = tl.where(c0 > 0, lim_rmw, 0)  # 1st channel block overwrites
                h_prev = _hmax_rows(xg, ch_off, chm, sg, row0 - 1, H, W, cols)
                h_cur = _hmax_rows(xg, ch_off, chm, sg, row0, H, W, cols)
                for i in range(0, hs):
                    r = row0 + i
                    h_next = _hmax_rows(xg, ch_off, chm, sg, r + 1, H, W, cols)
                    pooled = tl.maximum(tl.maximum(h_prev, h_cur), h_next)
                    valid = chm[:, None] & ((r < H) & (cols < W))[None, :]
                    pooled = tl.where(valid, pooled, 0.0)  # lanes outside: no inf*0 NaNs
                    a = sa[:, None] * pooled + sh[:, None]
                    a = tl.where(relu_dw != 0, tl.maximum(a, 0.0), a)
                    contrib = tl.sum(tl.where(valid, wt[:, None] * a, 0.0), axis=0)
                    acc += tl.where(cols < lim_reg, contrib, 0.0)
                    wp = wsg + r * W + cols
                    rv = r < H
                    old = tl.load(wp, mask=rv & (cols < lim_first), other=0.0)
                    tl.store(wp, old + contrib, mask=rv & (cols < lim_rmw))
                    h_prev = h_cur
                    h_cur = h_next
            tl.store(wsg + row0 * W + cols, acc, mask=(row0 < H) & (cols < lim_reg))
        tl.debug_barrier()

        # ---- pass B: online softmax statistics over the H*W logits (base-2 domain) ----
        m_run = tl.full([], float("-inf"), tl.float32)
        s_run = tl.full([], 0.0, tl.float32)
        for p0 in range(0, HW, TW):
            p = p0 + offs_t
            pm = p < HW
            lg = tl.load(wsg + p, mask=pm, other=0.0) + bias
            lg = tl.where(relu_pw != 0, tl.maximum(lg, 0.0), lg)
            lg = tl.where(pm, lg * LOG2E, float("-inf"))
            m_new = tl.maximum(m_run, tl.max(lg, axis=0))
            s_run = s_run * tl.exp2(m_run - m_new) + tl.sum(tl.exp2(lg - m_new), axis=0)
            m_run = m_new
        inv_s = 1.0 / s_run

        # ---- pass C: y = x * (1 + A) for this item's channels ----
        c_lo = s_idx * chunk
        c_hi = tl.minimum(c_lo + chunk, G)
        for p0 in range(0, HW, TW):
            p = p0 + offs_t
            pm = p < HW
            lg = tl.load(wsg + p, mask=pm, other=0.0) + bias
            lg = tl.where(relu_pw != 0, tl.maximum(lg, 0.0), lg)
            scale = 1.0 + tl.exp2(lg * LOG2E - m_run) * inv_s
            for c0 in range(c_lo, c_hi, OUT_C):
                oc = c0 + offs_oc
                m2 = (oc < c_hi)[:, None] & pm[None, :]
                off = oc[:, None] * HW + p[None, :]
                xv = tl.load(xg + off, mask=m2, other=0.0)
                yv = xv.to(tl.float32) * scale[None, :]
                tl.store(yg + off, yv.to(y_ptr.dtype.element_ty), mask=m2)


# --------------------------------------------------------------------------- torch launcher


def is_interpreted() -> bool:
    """True when this module was imported with ``TRITON_INTERPRET=1`` (kernel runs on CPU)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(ulsam_subspace_attention_kernel, InterpretedFunction)


def _as_f32_tensor(v, device, n, name):
    import numpy as np
    import torch

    t = v if torch.is_tensor(v) else torch.as_tensor(np.asarray(v, dtype=np.float32))
    t = t.to(device=device, dtype=torch.float32).contiguous()
    if tuple(t.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    return t


def subspace_attention(x, groups: int, dw_scale, dw_shift, pw_weight, pw_bias,
                       relu_dw: bool = True, relu_pw: bool = True, *, out=None,
                       workspace=None, split: int | None = None, grid: int | None = None,
                       sm_count: int | None = None, l2_bytes: int | None = None,
                       variant: int | None = None, return_plan: bool = False):
    """Run the fused kernel on a contiguous NCHW fp32/fp16 tensor ``x``.

    Works on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1``. ``split``, ``grid``
    and ``variant`` override the planner (tests use them to hit the channel split, the
    persistent loop and every tile family). ``workspace``: optional contiguous fp32 tensor of at
    least ``H * W`` elements; the grid is capped to the rows it holds (like the C++ launcher).
    """
    import torch

    if x.dim() != 4:
        raise ValueError(f"x must be 4-D NCHW, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"x must be float32 or float16, got {x.dtype}")
    x = x.contiguous()
    n, c, h, w = x.shape
    if groups < 1 or c % groups:
        raise ValueError(f"channels ({c}) must be a positive multiple of groups ({groups})")
    dtype = "fp16" if x.dtype == torch.float16 else "fp32"
    if sm_count is None and x.is_cuda:
        props = torch.cuda.get_device_properties(x.device)
        sm_count = props.multi_processor_count
        l2_bytes = l2_bytes or getattr(props, "L2_cache_size", None)
    if workspace is not None and (workspace.dtype != torch.float32 or not workspace.is_contiguous()):
        raise ValueError("workspace must be a contiguous fp32 tensor")
    pl = _plan.make_plan(n, c, h, w, groups, dtype, sm_count=sm_count, l2_bytes=l2_bytes,
                         split=split, grid=grid,
                         workspace_limit=None if workspace is None else workspace.numel() * 4)
    vid = pl.variant if variant is None else variant
    var = _plan.VARIANTS[vid]
    if variant is not None:  # re-plan the chunking with the forced variant's OUT_C
        chunk = min(c // groups, _plan.cdiv(_plan.cdiv(c // groups, pl.split), var.out_c) * var.out_c)
        spl = _plan.cdiv(c // groups, chunk)
        items = n * groups * spl
        pl = _plan.Plan(vid, spl, chunk, items, min(pl.grid, items), min(pl.grid, items) * h * w * 4,
                        var.num_warps)
    dev = x.device
    if not x.is_cuda and not is_interpreted():
        raise RuntimeError("the Triton kernel needs a CUDA tensor, or TRITON_INTERPRET=1 set before "
                           "ulsam_deploy.kernels.triton_kernel is imported (CPU interpreter)")
    s_t = _as_f32_tensor(dw_scale, dev, c, "dw_scale")
    t_t = _as_f32_tensor(dw_shift, dev, c, "dw_shift")
    w_t = _as_f32_tensor(pw_weight, dev, c, "pw_weight")
    b_t = _as_f32_tensor(pw_bias, dev, groups, "pw_bias")
    y = torch.empty_like(x) if out is None else out
    if workspace is None:
        workspace = torch.empty(pl.grid * h * w, device=dev, dtype=torch.float32)
    elif workspace.numel() < pl.grid * h * w:  # only reachable with a forced variant
        raise ValueError("workspace must hold at least grid*H*W fp32 elements")
    ulsam_subspace_attention_kernel[(pl.grid,)](
        x, s_t, t_t, w_t, b_t,
        c // groups, h, w, groups, pl.items, pl.split, pl.chunk, int(bool(relu_dw)),
        int(bool(relu_pw)),
        y, workspace,
        **var.constexprs,
        num_warps=var.num_warps,
    )
    return (y, pl) if return_plan else y
