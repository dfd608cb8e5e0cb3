"""The CPU's int8 instructions, and the int8 recipe ONNX Runtime's documentation gives for them.

ONNX Runtime's quantization guide: on x86-64 with AVX2 / AVX-512 but without VNNI, U8S8 runs through
VPMADDUBSW, which can saturate (two u8 x s8 products summed into int16); quantize the weights with
``reduce_range`` (7 bits) there. With AVX-512 VNNI or AVX-VNNI (VPDPBUSD accumulates in int32) and on Arm64
with the dot-product extension, U8S8 at full range is exact.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Int8Capabilities:
    machine: str
    avx2: bool = False
    avx512_vnni: bool = False
    avx_vnni: bool = False
    arm_dotprod: bool = False
    arm_i8mm: bool = False

    @property
    def vnni(self) -> bool:
        return self.avx512_vnni or self.avx_vnni

    @property
    def exact_u8s8(self) -> bool:
        """True where ONNX Runtime's U8S8 kernels cannot saturate (int32 dot products)."""
        return self.vnni or self.arm_dotprod or self.arm_i8mm

    def summary(self) -> str:
        names = [n for n, on in (("AVX2", self.avx2), ("AVX-512 VNNI", self.avx512_vnni), ("AVX-VNNI", self.avx_vnni),
                                 ("Arm dot-product", self.arm_dotprod), ("Arm i8mm", self.arm_i8mm)) if on]
        return ", ".join(names) or "no int8 dot-product instructions"

    def to_dict(self) -> dict:
        return {**asdict(self), "exact_u8s8": self.exact_u8s8, "summary": self.summary()}


def _cpu_flags() -> set[str]:
    """Runtime-detected CPU features, lower-cased in /proc/cpuinfo's spelling.

    NumPy's dispatcher asks CPUID (and the OS's XSAVE support) itself, like ONNX Runtime's MLAS does, so it
    is right where /proc/cpuinfo is not (an emulator, a container with masked features); /proc/cpuinfo adds
    the names NumPy does not track.
    """
    flags: set[str] = set()
    try:
        from numpy._core._multiarray_umath import __cpu_features__

        names = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512VNNI": "avx512_vnni", "AVXVNNI": "avx_vnni",
                 "ASIMDDP": "asimddp", "I8MM": "i8mm"}
        flags |= {names[k] for k, on in __cpu_features__.items() if on and k in names}
        detected = True
    except (ImportError, AttributeError):
        detected = False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    listed = set(line.split(":", 1)[1].split())
                    # on x86 the dispatcher's answer wins for what it tracks (AVX2 / AVX-512 VNNI)
                    flags |= listed - ({"avx2", "avx512f", "avx512_vnni"} if detected else set())
                    break
    except OSError:
        pass
    return flags


def int8_capabilities(flags: set[str] | None = None, machine: str | None = None) -> Int8Capabilities:
    """What this CPU offers for int8 (x86: AVX2, AVX-512 VNNI, AVX-VNNI; Arm: 'asimddp' = dot product, 'i8mm')."""
    flags = _cpu_flags() if flags is None else set(flags)
    machine = machine or platform.machine()
    return Int8Capabilities(machine=machine, avx2="avx2" in flags, avx512_vnni="avx512_vnni" in flags,
                            avx_vnni="avx_vnni" in flags, arm_dotprod="asimddp" in flags, arm_i8mm="i8mm" in flags)


@dataclass(frozen=True)
class OrtInt8Recipe:
    """quantize_static settings for ONNX Runtime's CPU int8 kernels on one kind of CPU."""

    activation: str  # "uint8" (U8S8)
    weight: str  # "int8"
    reduce_range: bool
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def ort_int8_recipe(caps: Int8Capabilities | None = None, reduce_range: bool | None = None) -> OrtInt8Recipe:
    """ONNX Runtime's documented choice for ``caps`` (``reduce_range`` forces it either way)."""
    caps = caps or int8_capabilities()
    if reduce_range is None:
        reduce_range = not caps.exact_u8s8
        why = (f"U8S8 at full range: {caps.summary()} accumulate u8 x s8 products exactly" if not reduce_range else
               f"U8S8 with reduce_range: {caps.summary()} offers no VNNI / dot-product, so ONNX Runtime's kernels use "
               "VPMADDUBSW, which saturates 8-bit weights")
    else:
        why = f"reduce_range {'on' if reduce_range else 'off'} as asked ({caps.summary()})"
    return OrtInt8Recipe("uint8", "int8", bool(reduce_range), why)


__all__ = ["Int8Capabilities", "OrtInt8Recipe", "int8_capabilities", "ort_int8_recipe"]
