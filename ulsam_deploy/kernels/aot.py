"""Ahead-of-time kernel images for the fused subspace-attention kernel - no GPU needed.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32), options=...)`` runs the whole
Triton pipeline (TTIR -> TTGIR -> LLVM -> PTX) on a machine without a GPU or driver. From its PTX
we ship two kinds of image (package data ``ulsam_deploy/kernels/images/``, regenerate with
``python -m ulsam_deploy.kernels.aot``):

* ``ptx/<dtype>_<variant>.sm_<target>.ptx`` - PTX ISA **8.0** (Triton's ``ptx_version=80``), which
  every CUDA 12.0+ driver (R525+, the oldest TensorRT 10.x cu12 supports) can JIT. Stored once per
  distinct body: the Triton output for several architectures differs only in its ``.target``
  line, so the file of the lowest such architecture serves all of them (PTX runs on any GPU at
  or above its target). tensorrt.plugin (QDP) AOT accepts PTX only, so it uses these.
* ``cubin/<dtype>_<variant>.sm_<arch>.cubin`` - one per shipped architecture, assembled from that
  PTX with a **CUDA 12.x** ``ptxas`` (Triton's bundled one by default). CUDA 12 ptxas writes ELF
  ABI version 7, which every CUDA 12 and 13 driver loads; CUDA 13's ptxas writes ABI version 8,
  which CUDA 12 drivers predate, so it is refused for cubins. Known GPUs never JIT.
* ``manifest.json`` - launch metadata shared by the C++ launcher (CMake embeds the images from it,
  ``plugins/subspace_attention/embed_images.cmake``) and the QDP route: entry name, parameter order
  (including Triton's two hidden trailing scratch pointers), and per (arch, dtype, variant) the
  PTX file, the cubin file, warps, threads, shared memory, registers and SHA-256 of both images.

For ``sm_90`` Triton emits ``.target sm_90a`` (arch-specific, not forward compatible); the kernel
uses no sm_90a feature, so the target is rewritten to ``sm_90`` (ptxas in the tests proves it
assembles), which also lets the sm_90 body join the shared PTX of the other architectures.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ulsam_deploy.kernels import plan as _plan

IMAGE_DIR = Path(__file__).resolve().parent / "images"
#: Jetson Orin = 87; x86: Turing 75, Ampere 80/86, Ada 89, Hopper 90. Older than 75 is not a
#: Triton 3.x target.
DEFAULT_ARCHS = (75, 80, 86, 87, 89, 90)
#: PTX ISA 8.0 = CUDA 12.0 driver (R525): what TensorRT 10.x cu12 requires anyway.
DEFAULT_PTX_VERSION = 80
MANIFEST_FORMAT = 2
HIDDEN_PARAMS = ("global_scratch", "profile_scratch")
#: Major version a cubin-assembling ptxas must have (see module docstring).
CUBIN_PTXAS_MAJOR = 12
CUBIN_ELF_ABI = 7
EM_CUDA = 190
#: First CUDA driver version that JIT-compiles a PTX ISA version (PTX ISA release history).
PTX_ISA_MIN_DRIVER = {"7.8": "11.8", "8.0": "12.0", "8.1": "12.1", "8.2": "12.2", "8.3": "12.3",
                      "8.4": "12.4", "8.5": "12.5", "8.6": "12.7", "8.7": "12.8", "8.8": "12.9",
                      "9.0": "13.0"}
#: Oldest driver that loads an ELF ABI version (ABI 8 came with CUDA 13).
CUBIN_ABI_MIN_DRIVER = {7: "12.0", 8: "13.0"}

_ENTRY_RE = re.compile(r"\.entry\s+(\w+)\s*\((.*?)\)", re.S)
_PARAM_RE = re.compile(r"\.param\s+\.(\w+)")
_TARGET_LINE_RE = re.compile(r"^\.target\s+\S+\s*$", re.M)


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
    def stem(self) -> str:
        return f"{self.dtype}_{_plan.VARIANTS[self.variant].name}"


@dataclass(frozen=True)
class Ptxas:
    path: str
    version: str  # "12.9"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


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


def ptx_body(ptx: str) -> str:
    """The PTX without its ``.target`` line: equal bodies are one image for several targets."""
    return _TARGET_LINE_RE.sub("", ptx, count=1)


@contextlib.contextmanager
def _quiet_triton():
    """No line info in the PTX (halves its size)."""
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
    want = f"{ptx_version // 10}.{ptx_version % 10}"
    if ptx_header(ptx)[0] != want:
        raise RuntimeError(f"Triton wrote PTX ISA {ptx_header(ptx)[0]}, asked for {want}")
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


# --------------------------------------------------------------------------- ptxas and cubins


def ptxas_version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+\.\d+)", out)
    if not m:
        raise RuntimeError(f"cannot read the version of {exe}: {out.strip()[:200]}")
    return m.group(1)


def find_ptxas() -> str | None:
    """ptxas of the CUDA toolkit (``$CUDA_HOME``, /usr/local/cuda, PATH): PTX validation."""
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "ptxas").is_file():
            return str(Path(root) / "bin" / "ptxas")
    return shutil.which("ptxas")


def find_cubin_ptxas(explicit: str | None = None) -> Ptxas:
    """The ptxas that assembles the shipped cubins: ``explicit``, else Triton's bundled one
    (pinned by the Triton version, so regeneration is reproducible), else the toolkit's.
    It must be CUDA 12.x (ELF ABI 7, see module docstring); raises ``RuntimeError`` otherwise."""
    cands = [explicit] if explicit else []
    if not explicit:
        with contextlib.suppress(Exception):
            from triton import knobs

            cands.append(knobs.nvidia.ptxas.path)
        cands.append(find_ptxas())
    seen = []
    for exe in cands:
        if not exe or not Path(exe).is_file():
            continue
        ver = ptxas_version(exe)
        if int(ver.split(".")[0]) == CUBIN_PTXAS_MAJOR:
            return Ptxas(str(exe), ver)
        seen.append(f"{exe} ({ver})")
    raise RuntimeError(f"no CUDA {CUBIN_PTXAS_MAJOR}.x ptxas for the cubins (found: {', '.join(seen) or 'none'}); "
                       f"CUDA 13 ptxas writes cubins that CUDA 12 drivers cannot load. Install triton "
                       f"(bundles one) or pass --ptxas /path/to/cuda-12.x/bin/ptxas")


def _ptxas_stats(log: str) -> dict:
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores", log)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_bytes": int(spill.group(1)) if spill else None}


def assemble_cubin(ptx_path: str | os.PathLike, arch: int, ptxas: Ptxas) -> tuple[bytes, dict]:
    """``ptxas -arch=sm_<arch>`` (default optimisation, as the driver's JIT) -> (cubin, stats)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "k.cubin"
        res = subprocess.run([ptxas.path, f"-arch=sm_{arch}", "-v", str(ptx_path), "-o", str(out)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"ptxas -arch=sm_{arch} {ptx_path} failed:\n{res.stderr}")
        return out.read_bytes(), _ptxas_stats(res.stderr + res.stdout)


def cubin_elf_info(data: bytes) -> dict:
    """ELF header facts of a cubin: ``abi`` (EI_ABIVERSION), ``machine``, ``sm`` (from e_flags:
    bits 0-7 in ABI 7, bits 8-15 in ABI 8). Raises ``ValueError`` for anything but a 64-bit ELF."""
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF")
    abi = data[8]
    machine = struct.unpack_from("<H", data, 18)[0]
    flags = struct.unpack_from("<I", data, 48)[0]
    sm = (flags >> 8) & 0xFF if abi >= 8 else flags & 0xFF
    return {"abi": abi, "osabi": data[7], "machine": machine, "flags": flags, "sm": sm}


def ptxas_check(ptx_path: str | os.PathLike, arch: int, ptxas: str | None = None) -> str:
    """Assemble a PTX file with ptxas for ``sm_<arch>``; returns ptxas's -v output; raises
    ``RuntimeError`` with its stderr on failure."""
    exe = ptxas or find_ptxas()
    if not exe:
        raise FileNotFoundError("ptxas not found (set CUDA_HOME)")
    res = subprocess.run([exe, f"-arch=sm_{arch}", "-v", str(ptx_path), "-o", os.devnull],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"ptxas -arch=sm_{arch} {ptx_path} failed:\n{res.stderr}")
    return res.stderr + res.stdout


# --------------------------------------------------------------------------- manifest


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_manifest(records: list[dict], ptx_files: list[dict], archs, ptx_version: int,
                   ptxas: Ptxas) -> dict:
    import triton

    from ulsam_deploy.kernels.triton_kernel import CONSTEXPR_NAMES, KERNEL_NAME, PARAM_ORDER

    params = [{"name": n, "type": ("ptr" if k.startswith(("*", "ptr")) else k),
               "elem": ("io" if k == "ptr_io" else (k[1:] if k.startswith("*") else None))}
              for n, k in PARAM_ORDER]
    params += [{"name": n, "type": "ptr", "elem": None, "hidden": True,
                "note": "Triton-added trailing scratch pointer; pass NULL (size 0)"}
               for n in HIDDEN_PARAMS]
    isa = f"{ptx_version // 10}.{ptx_version % 10}"
    return {
        "format": MANIFEST_FORMAT,
        "generator": "ulsam_deploy.kernels.aot",
        "triton_version": triton.__version__,
        "ptx_version": isa,
        "ptx_min_driver": PTX_ISA_MIN_DRIVER.get(isa),
        "cubin_ptxas": ptxas.version,
        "cubin_elf_abi": CUBIN_ELF_ABI,
        "cubin_min_driver": CUBIN_ABI_MIN_DRIVER[CUBIN_ELF_ABI],
        "entry": KERNEL_NAME,
        "params": params,
        "constexpr_names": list(CONSTEXPR_NAMES),
        "archs": list(archs),
        "dtypes": list(_plan.DTYPES),
        "variants": [dict(id=i, name=v.name, num_warps=v.num_warps, **v.constexprs)
                     for i, v in enumerate(_plan.VARIANTS)],
        "ptx_files": ptx_files,
        "kernels": records,
    }


def generate(out_dir: str | os.PathLike = IMAGE_DIR, archs=DEFAULT_ARCHS, dtypes=_plan.DTYPES,
             variants=None, *, ptx_version: int = DEFAULT_PTX_VERSION, ptxas: str | None = None,
             clean: bool = True, log=None) -> dict:
    """Compile every (arch, dtype, variant), write the deduplicated PTX, one cubin per arch and
    ``manifest.json`` under ``out_dir``; return the manifest."""
    assembler = find_cubin_ptxas(ptxas)
    out = Path(out_dir)
    if clean:
        for sub in ("ptx", "cubin"):
            if (out / sub).exists():
                shutil.rmtree(out / sub)
    (out / "ptx").mkdir(parents=True, exist_ok=True)
    (out / "cubin").mkdir(parents=True, exist_ok=True)
    variants = range(len(_plan.VARIANTS)) if variants is None else variants
    expected = expected_ptx_params()
    kernels: list[CompiledKernel] = []
    for arch in sorted(archs):
        for dtype in dtypes:
            for vid in variants:
                k = compile_kernel(dtype, vid, arch, ptx_version=ptx_version)
                if k.ptx_params != expected:
                    raise RuntimeError(f"PTX params {k.ptx_params} != expected {expected}")
                if k.global_scratch_bytes or k.profile_scratch_bytes:
                    raise RuntimeError("kernel unexpectedly requests Triton scratch memory")
                kernels.append(k)
    # one PTX file per distinct body: the lowest architecture's text (archs are sorted)
    shared: dict[tuple, dict] = {}
    ptx_of: dict[int, dict] = {}
    for i, k in enumerate(kernels):
        key = (k.dtype, k.variant, ptx_body(k.ptx))
        if key not in shared:
            name = f"ptx/{k.stem}.sm_{k.arch}.ptx"
            data = k.ptx.encode()
            (out / name).write_bytes(data)
            shared[key] = {"file": name, "target": k.arch, "dtype": k.dtype, "variant": k.variant,
                           "sha256": _sha(data), "bytes": len(data), "archs": []}
        shared[key]["archs"].append(k.arch)
        ptx_of[i] = shared[key]
    records = []
    for i, k in enumerate(kernels):
        px = ptx_of[i]
        cubin, stats = assemble_cubin(out / px["file"], k.arch, assembler)
        info = cubin_elf_info(cubin)
        if info["sm"] != k.arch or info["abi"] != CUBIN_ELF_ABI:
            raise RuntimeError(f"ptxas wrote sm_{info['sm']} / ELF ABI {info['abi']} for sm_{k.arch}")
        cname = f"cubin/{k.stem}.sm_{k.arch}.cubin"
        (out / cname).write_bytes(cubin)
        var = _plan.VARIANTS[k.variant]
        records.append({
            "arch": k.arch, "dtype": k.dtype, "variant": k.variant, "variant_name": var.name,
            "file": px["file"], "ptx_target": px["target"], "cubin": cname,
            "entry": k.entry, "num_warps": k.num_warps, "threads": 32 * k.num_warps,
            "shared_bytes": k.shared_bytes, "global_scratch_bytes": k.global_scratch_bytes,
            "profile_scratch_bytes": k.profile_scratch_bytes, "constexprs": var.constexprs,
            "ptx_params": k.ptx_params, "sha256": px["sha256"], "ptx_bytes": px["bytes"],
            "cubin_sha256": _sha(cubin), "cubin_bytes": len(cubin), **stats,
        })
        if log:
            log(f"sm_{k.arch} {k.stem}: {px['file']} + {cname} ({len(cubin)} bytes, "
                f"{stats['registers']} registers, {stats['spill_bytes']} B spilled)")
    manifest = build_manifest(records, list(shared.values()), sorted(archs), ptx_version, assembler)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def load_manifest(image_dir: str | os.PathLike = IMAGE_DIR) -> dict:
    path = Path(image_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `python -m ulsam_deploy.kernels.aot`")
    return json.loads(path.read_text())


def find_kernel(manifest: dict, arch: int, dtype: str, variant: int) -> dict | None:
    """Record whose PTX serves a device of compute capability ``arch`` (e.g. 87): same arch,
    else the nearest lower one (PTX JIT-compiles forward), else ``None``. ``record["file"]`` is
    the PTX (what tensorrt.plugin AOT takes)."""
    cands = [k for k in manifest["kernels"]
             if k["dtype"] == dtype and k["variant"] == variant and k["arch"] <= arch]
    return max(cands, key=lambda k: k["arch"]) if cands else None


def find_cubin(manifest: dict, arch: int, dtype: str, variant: int) -> dict | None:
    """Record whose cubin runs natively on compute capability ``arch``: the same arch, else the
    highest lower minor of the same major (SASS runs on X.z for a cubin built for X.y, z >= y)."""
    cands = [k for k in manifest["kernels"]
             if k["dtype"] == dtype and k["variant"] == variant and k.get("cubin")
             and k["arch"] // 10 == arch // 10 and k["arch"] <= arch]
    return max(cands, key=lambda k: k["arch"]) if cands else None


def _ver(text: str | None) -> tuple[int, int]:
    parts = [int(p) for p in re.findall(r"\d+", text or "")[:2]] + [0, 0]
    return parts[0], parts[1]


def image_plan(manifest: dict, cc: int | None, driver_cuda: str | None) -> tuple[str, str]:
    """What the launcher will load on a GPU of compute capability ``cc`` under a driver that
    supports CUDA ``driver_cuda`` (e.g. "12.2"): (``"cubin" | "ptx" | "none" | "unknown"``,
    a sentence). Same rules as ``selectImage`` in launcher.cpp."""
    if cc is None or driver_cuda is None:
        return "unknown", "no GPU/driver visible: cannot tell which kernel image would load"
    isa = manifest.get("ptx_version", "?")
    ptx_need = manifest.get("ptx_min_driver") or PTX_ISA_MIN_DRIVER.get(isa, "99.0")
    cubin_need = manifest.get("cubin_min_driver", "99.0")
    drv = _ver(driver_cuda)
    if cc < min(manifest["archs"]):
        return "none", (f"will not load: sm_{cc} is older than the oldest shipped target "
                        f"sm_{min(manifest['archs'])}")
    cub = find_cubin(manifest, cc, "fp32", 0)
    if cub is not None and drv >= _ver(cubin_need):
        how = "native" if cub["arch"] == cc else f"sm_{cub['arch']} (binary compatible)"
        return "cubin", (f"cubin {how} for this GPU (driver CUDA {driver_cuda} >= {cubin_need}): "
                         "no JIT")
    if drv >= _ver(ptx_need):
        rec = find_kernel(manifest, cc, "fp32", 0)
        return "ptx", (f"PTX JIT: no cubin for sm_{cc}; the driver compiles the sm_{rec['ptx_target']} "
                       f"PTX (ISA {isa}) once per process at prepare time")
    return "none", (f"will not load: driver CUDA {driver_cuda} is older than the {ptx_need} the "
                    f"PTX (ISA {isa}) needs; update the NVIDIA driver (R525+)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ulsam_deploy.kernels.aot",
                                 description="Compile the ULSAM kernel to PTX + cubins without a GPU.")
    ap.add_argument("--out", default=str(IMAGE_DIR), help="output folder (default: package data)")
    ap.add_argument("--arch", type=int, action="append",
                    help=f"compute capability such as 87 (repeatable; default {DEFAULT_ARCHS})")
    ap.add_argument("--ptx-version", type=int, default=DEFAULT_PTX_VERSION,
                    help="PTX ISA as 80 = 8.0 (CUDA 12.0 drivers JIT <= 8.0)")
    ap.add_argument("--ptxas", help=f"CUDA {CUBIN_PTXAS_MAJOR}.x ptxas for the cubins (default: Triton's)")
    ap.add_argument("--print-dir", action="store_true",
                    help="print the shipped image folder (for -DULSAM_KERNEL_IMAGE_DIR) and exit")
    args = ap.parse_args(argv)
    if args.print_dir:
        print(IMAGE_DIR)
        return 0
    archs = tuple(args.arch) if args.arch else DEFAULT_ARCHS
    man = generate(args.out, archs, ptx_version=args.ptx_version, ptxas=args.ptxas, log=print)
    print(f"wrote {len(man['ptx_files'])} PTX + {len(man['kernels'])} cubins + manifest to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
