"""Ahead-of-time PTX generation for the fused subspace-attention kernel - no GPU needed.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32), options=...)`` runs the whole
Triton pipeline (TTIR -> TTGIR -> LLVM -> PTX, and a cubin with Triton's bundled ptxas) on a
machine without a GPU or driver. We keep only the PTX: the driver JIT-compiles PTX for the
actual GPU (forward compatible), which is what both the C++ launcher and TensorRT's
``tensorrt.plugin`` AOT path (PTX only) consume.

Shipped package data (``ulsam_deploy/kernels/ptx/``, regenerate with
``python -m ulsam_deploy.kernels.aot``):

* ``sm_<cc>/<dtype>_<variant>.ptx`` for every arch in :data:`DEFAULT_ARCHS`, dtype in
  ``fp32, fp16`` and tile variant in :data:`ulsam_deploy.kernels.plan.VARIANTS`;
* ``manifest.json`` - launch metadata: entry name, parameter order (including Triton's two
  hidden trailing scratch pointers), per kernel ``num_warps``, threads, dynamic shared memory,
  scratch sizes, constexprs and the SHA-256 of the PTX;
  CMake reads it (``plugins/subspace_attention/embed_ptx.cmake``) to embed the PTX into the
  launcher / TensorRT plugin library.

PTX ISA: ``.version 8.5`` by default (``ptx_version=85``) so JetPack 6 (CUDA 12.6 driver) can JIT
it; Triton's default (8.8+) needs a CUDA >= 12.8 driver. For ``sm_90`` Triton emits
``.target sm_90a`` (arch-specific, not forward compatible); the kernel uses no sm_90a feature, so
the target line is rewritten to ``sm_90`` - ptxas in the tests proves that still assembles - which
lets Blackwell GPUs fall back to it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ulsam_deploy.kernels import plan as _plan

PTX_DIR = Path(__file__).resolve().parent / "ptx"
#: Jetson Orin = 87; x86: Turing 75, Ampere 80/86, Ada 89, Hopper 90. Triton 3.9 compiles
#: 75..90 (and 100/120 with a newer ptxas); older than 75 is not supported by Triton 3.x.
DEFAULT_ARCHS = (75, 80, 86, 87, 89, 90)
DEFAULT_PTX_VERSION = 85
MANIFEST_FORMAT = 1
HIDDEN_PARAMS = ("global_scratch", "profile_scratch")

_ENTRY_RE = re.compile(r"\.entry\s+(\w+)\s*\((.*?)\)", re.S)
_PARAM_RE = re.compile(r"\.param\s+\.(\w+)")


@dataclass
class CompiledKernel:
    arch: int
    dtype: str
    variant: int
    ptx: str
    entry: str
    num_warps: int
    shared_bytes: int
    global_scratch_bytes: int
    profile_scratch_bytes: int
    ptx_params: list[str]

    @property
    def file_name(self) -> str:
        return f"sm_{self.arch}/{self.dtype}_{_plan.VARIANTS[self.variant].name}.ptx"

    def record(self) -> dict:
        var = _plan.VARIANTS[self.variant]
        return {
            "arch": self.arch,
            "dtype": self.dtype,
            "variant": self.variant,
            "variant_name": var.name,
            "file": self.file_name,
            "entry": self.entry,
            "num_warps": self.num_warps,
            "threads": self.num_warps * 32,
            "shared_bytes": self.shared_bytes,
            "global_scratch_bytes": self.global_scratch_bytes,
            "profile_scratch_bytes": self.profile_scratch_bytes,
            "constexprs": var.constexprs,
            "ptx_params": self.ptx_params,
            "sha256": hashlib.sha256(self.ptx.encode()).hexdigest(),
            "ptx_bytes": len(self.ptx.encode()),
        }


def signature_for(dtype: str) -> dict:
    """Triton signature dict (runtime params + constexpr markers) for one dtype."""
    from ulsam_deploy.kernels.triton_kernel import CONSTEXPR_NAMES, PARAM_ORDER

    io = {"fp32": "*fp32", "fp16": "*fp16"}[dtype]
    sig = {name: (io if kind == "ptr_io" else kind) for name, kind in PARAM_ORDER}
    for name in CONSTEXPR_NAMES:
        sig[name] = "constexpr"
    return sig


def parse_ptx_entry(ptx: str) -> tuple[str, list[str]]:
    """(entry name, list of PTX param types) of the single ``.entry`` in ``ptx``."""
    m = _ENTRY_RE.search(ptx)
    if not m:
        raise ValueError("no .entry found in PTX")
    return m.group(1), _PARAM_RE.findall(m.group(2))


def ptx_header(ptx: str) -> tuple[str, str]:
    """(``.version`` value, ``.target`` value) of a PTX module."""
    ver = re.search(r"^\.version\s+(\S+)", ptx, re.M)
    tgt = re.search(r"^\.target\s+(\S+)", ptx, re.M)
    if not ver or not tgt:
        raise ValueError("PTX lacks a .version or .target line")
    return ver.group(1), tgt.group(1).rstrip(",")


@contextlib.contextmanager
def _quiet_triton():
    """No line info in the PTX (halves its size), FP fusion explicitly on (Triton 3.9 default)."""
    import triton

    comp = triton.knobs.compilation
    old = comp.disable_line_info
    comp.disable_line_info = True
    try:
        yield
    finally:
        comp.disable_line_info = old


def compile_kernel(dtype: str, variant: int, arch: int, *,
                   ptx_version: int = DEFAULT_PTX_VERSION) -> CompiledKernel:
    """Compile one specialization to PTX for ``sm_<arch>`` without touching a GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ulsam_deploy.kernels.triton_kernel import KERNEL_NAME, ulsam_subspace_attention_kernel

    if dtype not in _plan.DTYPES:
        raise ValueError(f"dtype must be one of {_plan.DTYPES}")
    if type(ulsam_subspace_attention_kernel).__name__ == "InterpretedFunction":
        raise RuntimeError("Triton runs in interpreter mode (TRITON_INTERPRET=1) in this process; "
                           "AOT compilation needs a process started without it")
    var = _plan.VARIANTS[variant]
    src = ASTSource(fn=ulsam_subspace_attention_kernel, signature=signature_for(dtype),
                    constexprs=var.constexprs)
    opts = {"num_warps": var.num_warps, "num_stages": 1, "ptx_version": ptx_version,
            "enable_fp_fusion": True}
    with _quiet_triton():
        out = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
    ptx = out.asm["ptx"]
    if arch == 90:  # see module docstring: no sm_90a feature is used
        ptx = re.sub(r"^\.target\s+sm_90a\b", ".target sm_90", ptx, flags=re.M)
    entry, params = parse_ptx_entry(ptx)
    md = out.metadata
    if entry != KERNEL_NAME or md.name != KERNEL_NAME:
        raise RuntimeError(f"unexpected entry name {entry!r}/{md.name!r}")
    return CompiledKernel(arch, dtype, variant, ptx, entry, int(md.num_warps), int(md.shared),
                          int(getattr(md, "global_scratch_size", 0) or 0),
                          int(getattr(md, "profile_scratch_size", 0) or 0), params)


def expected_ptx_params() -> list[str]:
    """PTX parameter types the launcher assumes: 5 pointers, 9 int32, 2 pointers, 2 hidden."""
    from ulsam_deploy.kernels.triton_kernel import PARAM_ORDER

    types = ["u64" if kind.startswith(("*", "ptr")) else "u32" for _, kind in PARAM_ORDER]
    return types + ["u64"] * len(HIDDEN_PARAMS)


def build_manifest(kernels: list[CompiledKernel], archs, ptx_version: int) -> dict:
    import triton

    from ulsam_deploy.kernels.triton_kernel import CONSTEXPR_NAMES, KERNEL_NAME, PARAM_ORDER

    params = [{"name": n, "type": ("ptr" if k.startswith(("*", "ptr")) else k),
               "elem": ("io" if k == "ptr_io" else (k[1:] if k.startswith("*") else None))}
              for n, k in PARAM_ORDER]
    params += [{"name": n, "type": "ptr", "elem": None, "hidden": True,
                "note": "Triton-added trailing scratch pointer; pass NULL (size 0)"}
               for n in HIDDEN_PARAMS]
    return {
        "format": MANIFEST_FORMAT,
        "generator": "ulsam_deploy.kernels.aot",
        "triton_version": triton.__version__,
        "ptx_version": f"{ptx_version // 10}.{ptx_version % 10}",
        "entry": KERNEL_NAME,
        "params": params,
        "constexpr_names": list(CONSTEXPR_NAMES),
        "archs": list(archs),
        "dtypes": list(_plan.DTYPES),
        "variants": [dict(id=i, name=v.name, num_warps=v.num_warps, **v.constexprs)
                     for i, v in enumerate(_plan.VARIANTS)],
        "kernels": [k.record() for k in kernels],
    }


def generate(out_dir: str | os.PathLike = PTX_DIR, archs=DEFAULT_ARCHS, dtypes=_plan.DTYPES,
             variants=None, *, ptx_version: int = DEFAULT_PTX_VERSION, clean: bool = True,
             log=None) -> dict:
    """Compile every (arch, dtype, variant), write the PTX files + ``manifest.json`` under
    ``out_dir`` and return the manifest. This is what a future
    ``ulsam-deploy aot`` command calls."""
    out = Path(out_dir)
    if clean and out.exists():
        for sub in out.glob("sm_*"):
            shutil.rmtree(sub)
    out.mkdir(parents=True, exist_ok=True)
    variants = range(len(_plan.VARIANTS)) if variants is None else variants
    expected = expected_ptx_params()
    kernels = []
    for arch in archs:
        for dtype in dtypes:
            for vid in variants:
                k = compile_kernel(dtype, vid, arch, ptx_version=ptx_version)
                if k.ptx_params != expected:
                    raise RuntimeError(f"PTX params {k.ptx_params} != expected {expected}")
                if k.global_scratch_bytes or k.profile_scratch_bytes:
                    raise RuntimeError("kernel unexpectedly requests Triton scratch memory")
                path = out / k.file_name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(k.ptx)
                kernels.append(k)
                if log:
                    log(f"sm_{arch} {dtype} {_plan.VARIANTS[vid].name}: {len(k.ptx)} bytes, "
                        f"{k.num_warps} warps, {k.shared_bytes} B shared")
    manifest = build_manifest(kernels, archs, ptx_version)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    return manifest


def load_manifest(ptx_dir: str | os.PathLike = PTX_DIR) -> dict:
    path = Path(ptx_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `python -m ulsam_deploy.kernels.aot`")
    return json.loads(path.read_text())


def find_kernel(manifest: dict, arch: int, dtype: str, variant: int) -> dict | None:
    """Best shipped kernel for a device of compute capability ``arch`` (e.g. 87): same arch,
    else the nearest lower one (PTX JIT-compiles forward), else ``None``."""
    cands = [k for k in manifest["kernels"]
             if k["dtype"] == dtype and k["variant"] == variant and k["arch"] <= arch]
    return max(cands, key=lambda k: k["arch"]) if cands else None


def find_ptxas() -> str | None:
    """ptxas of the CUDA toolkit (``$CUDA_HOME``, /usr/local/cuda, PATH)."""
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "ptxas").is_file():
            return str(Path(root) / "bin" / "ptxas")
    return shutil.which("ptxas")


def ptxas_check(ptx_path: str | os.PathLike, arch: int, ptxas: str | None = None) -> str:
    """Assemble a PTX file with the toolkit's ptxas for ``sm_<arch>``; returns ptxas's -v
    output; raises ``RuntimeError`` with its stderr on failure."""
    exe = ptxas or find_ptxas()
    if not exe:
        raise FileNotFoundError("ptxas not found (set CUDA_HOME)")
    res = subprocess.run([exe, f"-arch=sm_{arch}", "-v", str(ptx_path), "-o", os.devnull],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"ptxas -arch=sm_{arch} {ptx_path} failed:\n{res.stderr}")
    return res.stderr + res.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ulsam_deploy.kernels.aot",
                                 description="Compile the ULSAM kernel to PTX without a GPU.")
    ap.add_argument("--out", default=str(PTX_DIR), help="output folder (default: package data)")
    ap.add_argument("--arch", type=int, action="append",
                    help=f"compute capability such as 87 (repeatable; default {DEFAULT_ARCHS})")
    ap.add_argument("--ptx-version", type=int, default=DEFAULT_PTX_VERSION,
                    help="PTX ISA as 85 = 8.5 (JetPack 6 drivers JIT <= 8.5)")
    ap.add_argument("--ptxas", action="store_true", help="also assemble every PTX with ptxas")
    args = ap.parse_args(argv)
    archs = tuple(args.arch) if args.arch else DEFAULT_ARCHS
    man = generate(args.out, archs, ptx_version=args.ptx_version, log=print)
    if args.ptxas:
        for k in man["kernels"]:
            ptxas_check(Path(args.out) / k["file"], k["arch"])
        print(f"ptxas: {len(man['kernels'])} kernels assemble")
    print(f"wrote {len(man['kernels'])} kernels + manifest to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
