"""``ulsam-deploy doctor``: what is installed, what works, what each missing piece disables, how to get it.

Every probe is defensive (a broken package is reported, never raised) and cheap; TensorRT and the
CUDA driver are probed for real (``import tensorrt``; ``libcuda.so.1`` via ctypes), since "installed"
and "usable" differ there.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import platform
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ulsam_deploy.extras import install_command


@dataclass
class Check:
    name: str
    ok: bool
    version: str | None = None
    detail: str = ""
    disables: str = ""  # what does not work while this is missing
    fix: str = ""  # how to get it
    optional: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def get(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict:
        return {"checks": [c.to_dict() for c in self.checks],
                "summary": {"ok": [c.name for c in self.checks if c.ok],
                            "missing": [c.name for c in self.checks if not c.ok]}}


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _import(module: str):
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # noqa: BLE001 - broken installs raise anything
        return None, f"{type(exc).__name__}: {_first_line(exc)}"


def check_python() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check("python", ok, platform.python_version(), f"{sys.executable} ({platform.machine()})",
                 "" if ok else "everything", "" if ok else "Python 3.10 or newer", optional=False)


def _torch_cuda_build(version: str | None) -> str | None:
    """The CUDA version torch was built for, read from ``torch/version.py`` (importing torch costs seconds)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        text = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text()
    except OSError:
        text = ""
    match = re.search(r"^cuda(?:: [^=]+)? = '([^']+)'", text, re.MULTILINE)
    if match:
        return match.group(1)
    local = (version or "").partition("+")[2]  # 2.13.0+cu126 / +cpu
    return f"{local[2:4]}.{local[4:]}" if local.startswith("cu") and len(local) > 4 else None


def check_torch() -> Check:
    """Found, not imported: ``doctor`` stays fast and torch-free; optional, since the base install runs ONNX files and
    engines without it (a Jetson board)."""
    fix = f"{install_command('torch')} (scripts/setup.sh installs the CPU wheel first)"
    if importlib.util.find_spec("torch") is None:
        return Check("torch", False, None, "not installed (the base install runs ONNX files and engines without it)",
                     "export, train, demo, inspect of a checkpoint, the torch bench backend", fix)
    version = _dist_version("torch")
    cuda = _torch_cuda_build(version)
    detail = f"CUDA {cuda} build" if cuda else "CPU build"
    return Check("torch", True, version, detail + " (not imported by doctor)")


def check_found(name: str, module: str, disables: str, fix: str) -> Check:
    """Found and versioned without importing: onnxsim and onnxruntime-extensions import torch where it is installed."""
    if importlib.util.find_spec(module) is None:
        return Check(name, False, None, "not installed", disables, fix)
    return Check(name, True, _dist_version(name), "found (not imported: it loads torch where torch is installed)")


def check_simple(name: str, module: str, disables: str, fix: str, optional: bool = True) -> Check:
    mod, err = _import(module)
    if mod is None:
        return Check(name, False, _dist_version(name), err or "", disables, fix, optional)
    return Check(name, True, getattr(mod, "__version__", None) or _dist_version(name), "", optional=optional)


def check_onnxruntime() -> Check:
    mod, err = _import("onnxruntime")
    if mod is None:
        return Check("onnxruntime", False, None, err or "", "parity checks, precision passes, the ort backend",
                     "pip install onnxruntime (or onnxruntime-gpu)", optional=False)
    providers = list(mod.get_available_providers())
    detail = "providers: " + ", ".join(providers)
    missing = [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if p not in providers]
    check = Check("onnxruntime", True, mod.__version__, detail, optional=False)
    if missing:
        check.disables = f"bench --ort-provider {'/'.join('cuda' if 'CUDA' in p else 'trt' for p in missing)}"
        check.fix = "pip install onnxruntime-gpu (instead of onnxruntime) on a CUDA machine"
    return check


def check_tensorrt() -> Check:
    """Which TensorRT was found, from where (a pip wheel in the venv, or the system's apt package)."""
    from ulsam_deploy.backends.trt.runtime import TensorRTUnavailable, import_tensorrt, install_hint, tensorrt_origin

    try:
        trt = import_tensorrt()
    except TensorRTUnavailable as exc:
        return Check("tensorrt", False, _dist_version("tensorrt"), str(exc).split(";")[0],
                     "build-trt, the trt bench backend, engine checks", install_hint())
    version = getattr(trt, "__version__", "?")
    major = int(str(version).split(".")[0] or 0)
    origin = tensorrt_origin(trt)
    dist = origin["distribution"]
    notes = [f"{origin['module']} ({origin['where']}"
             + (f"; distribution {dist['name']} {dist['version']})" if dist else "; no pip distribution)")]
    notes.append("strongly typed only (11.x)" if major >= 11 else "strongly typed + weakly typed (10.x)")
    if hasattr(trt, "IProgressMonitor"):
        notes.append("progress monitor")
    try:  # found, not imported: importing it prints TensorRT's "experimental" warning on stdout (doctor --json)
        if importlib.util.find_spec("tensorrt.plugin") is not None:
            notes.append("tensorrt.plugin (QDP)")
    except Exception:  # noqa: BLE001
        pass
    return Check("tensorrt", True, version, ", ".join(notes))


def check_cuda_driver() -> tuple[Check, Check]:
    from ulsam_deploy.backends.trt.cuda import cuda_runtime_version, is_jetson, jetson_release, probe_cuda_driver

    driver = probe_cuda_driver()
    jetson = is_jetson()
    fix = ("JetPack installs the driver (sudo apt-get install nvidia-jetpack)" if jetson else
           "install the NVIDIA driver for your GPU (nvidia-smi must work)")
    if driver.available:
        gpus = "; ".join(f"{g.index}: {g.name} ({g.sm}, {g.total_memory_bytes / 2**30:.1f} GiB"
                         f"{', integrated' if g.integrated else ''})" for g in driver.gpus)
        drv = Check("cuda-driver", True, driver.driver_version, f"CUDA driver API {driver.driver_version}")
        gpu = Check("gpu", True, None, gpus + (f"; {jetson_release()}" if jetson else ""))
    else:
        drv = Check("cuda-driver", driver.library is not None, driver.driver_version, driver.error or "",
                    "every GPU backend (TensorRT, CUDA providers, Triton on GPU)", fix)
        gpu = Check("gpu", False, None, driver.error or "no GPU", "build-trt, GPU benchmarks, the fused kernel on GPU",
                    fix)
    runtime = cuda_runtime_version()
    if runtime:
        drv.detail += f"; CUDA runtime (libcudart) {runtime} loadable"
    return drv, gpu


# L4T release (/etc/nv_tegra_release "R36 ... REVISION: 4.x") -> JetPack and its TensorRT
JETPACK = {(36, 4): ("6.1/6.2", "10.3"), (36, 3): ("6.0", "8.6"), (36, 2): ("6.0 DP", "8.6"),
           (35, None): ("5.x", "8.5")}


def _power_mode() -> str | None:
    """``nvpmodel -q``'s mode ('MAXN (0)'), None where nvpmodel is absent or says nothing usable."""
    import shutil
    import subprocess

    exe = shutil.which("nvpmodel")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    name = re.search(r"NV Power Mode:\s*(\S+)", out)
    number = re.search(r"^\s*(\d+)\s*$", out, re.MULTILINE)
    return (name.group(1) + (f" ({number.group(1)})" if number else "")) if name else None


def check_jetson(root: str = "/", power_mode=_power_mode) -> Check | None:
    """On a Jetson: the board, its L4T release and JetPack, the power mode; None elsewhere.

    JetPack 6.0 (L4T R36.3) ships TensorRT 8.6, which build-trt refuses: the row says so before a build does.
    """
    base = Path(root)
    try:
        release = (base / "etc" / "nv_tegra_release").read_text(errors="replace").splitlines()[0].strip()
    except (OSError, IndexError):
        release = ""
    try:
        board = (base / "proc" / "device-tree" / "model").read_bytes().decode(errors="replace").strip("\x00 \n")
    except OSError:
        board = ""
    if not release and not any(k in board.lower() for k in ("jetson", "orin")):
        return None
    match = re.search(r"R(\d+)\D+REVISION:\s*((\d+)[.\d]*)", release)
    major, minor = (int(match.group(1)), int(match.group(3))) if match else (None, None)
    jetpack, trt = JETPACK.get((major, minor)) or JETPACK.get((major, None)) or (None, None)
    mode = power_mode()
    l4t = f"L4T R{major}.{match.group(2)}" if match else (f"L4T {release.lstrip('# ')[:40]}" if release else None)
    parts = [board or "Jetson", l4t or "L4T release unknown",
             f"JetPack {jetpack} (TensorRT {trt})" if jetpack else "JetPack unknown",
             f"power mode {mode}" if mode else "power mode unknown (sudo nvpmodel -q)"]
    ok = trt is None or trt.startswith("10")
    version = l4t if match else None
    if not ok:
        return Check("jetson", False, version, "; ".join(parts), "build-trt (TensorRT 10 needed)",
                     "upgrade to JetPack 6.1 or 6.2 (TensorRT 10.3)")
    return Check("jetson", True, version, "; ".join(parts) + "; stable timings need a fixed nvpmodel mode and "
                 "sudo jetson_clocks (docs/jetson.md)")


def check_kernel_images(driver=None) -> Check:
    """The shipped kernel images against this driver and GPU: which one the launcher will load
    (native cubin / PTX JIT) or why none will (driver older than the PTX ISA needs, GPU too old)."""
    from ulsam_deploy.kernels import aot

    try:
        manifest = aot.load_manifest()
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything
        return Check("kernel-images", False, None, _first_line(exc), "the fused kernel (C++ and Python TensorRT plugins)",
                     "python -m ulsam_deploy.kernels.aot (no GPU needed), or reinstall ulsam-deploy")
    archs = manifest.get("archs", [])
    version = (f"PTX ISA {manifest.get('ptx_version')} (driver >= CUDA {manifest.get('ptx_min_driver')}), "
               f"cubins sm_{min(archs)}..sm_{max(archs)}" if archs else None)
    if driver is None:
        from ulsam_deploy.backends.trt.cuda import probe_cuda_driver

        driver = probe_cuda_driver()
    if not driver.available or not driver.gpus:
        _, sentence = aot.image_plan(manifest, None, None)
        return Check("kernel-images", True, version, sentence)
    verdicts = []
    for gpu in driver.gpus:
        cc = int(gpu.compute_capability.replace(".", ""))
        verdicts.append((gpu, *aot.image_plan(manifest, cc, driver.driver_version)))
    detail = "; ".join(f"GPU {g.index} {g.name} ({g.sm}): {sentence}" for g, _, sentence in verdicts)
    if any(kind == "none" for _, kind, _ in verdicts):
        old_driver = any("driver" in s for _, kind, s in verdicts if kind == "none")
        return Check("kernel-images", False, version, detail, "the fused kernel (C++ and Python TensorRT plugins)",
                     "update the NVIDIA driver to R525 (CUDA 12.0) or newer" if old_driver
                     else "a GPU of compute capability 7.5 or newer (Triton's oldest target)")
    return Check("kernel-images", True, version, detail)


def check_triton() -> Check:
    version = _dist_version("triton")
    if version is None or importlib.util.find_spec("triton") is None:
        return Check("triton", False, None, "not installed",
                     "the Triton kernel (CPU interpreter tests, PTX generation)", install_command("triton"))
    return Check("triton", True, version, "CPU interpreter (TRITON_INTERPRET=1) and GPU-free PTX generation")


def check_plugin_library() -> Check:
    from ulsam_deploy.backends.trt.plugins import find_plugin_library, plugin_library_candidates

    try:
        path = find_plugin_library()
    except Exception as exc:  # noqa: BLE001
        path, err = None, _first_line(exc)
    else:
        err = None
    if path is None:
        return Check("plugin-library", False, None,
                     err or "not built (looked in " + ", ".join(str(p) for p in plugin_library_candidates()) + ")",
                     "build-trt --plugin lib, trtexec --dynamicPlugins",
                     "ulsam-deploy build-plugin (needs cmake, a C++17 compiler, CUDA and TensorRT headers)")
    from ulsam_deploy.artifacts import sha256_file

    return Check("plugin-library", True, None, f"{path} (sha256 {sha256_file(path)[:12]}...)")


def check_python_plugin(trt_check: Check) -> Check:
    from ulsam_deploy.backends.trt.plugins import PYTHON_PLUGIN_MODULE, QDP_AOT_MIN, python_plugin_available
    from ulsam_deploy.backends.trt.runtime import parse_version

    present = python_plugin_available()
    if not present:
        return Check("python-plugin", False, None, f"{PYTHON_PLUGIN_MODULE} is not in this install",
                     "build-trt --plugin python", "reinstall ulsam-deploy with its kernels")
    if not trt_check.ok:
        return Check("python-plugin", False, None, "needs TensorRT", "build-trt --plugin python", trt_check.fix)
    if parse_version(trt_check.version or "0") < QDP_AOT_MIN:
        return Check("python-plugin", False, None, f"TensorRT {trt_check.version} lacks tensorrt.plugin aot_impl",
                     "build-trt --plugin python", "TensorRT 10.9 or newer, or use --plugin lib")
    return Check("python-plugin", True, None, f"{PYTHON_PLUGIN_MODULE} (TensorRT {trt_check.version})")


def check_data() -> list[Check]:
    checks = []
    try:
        from ulsam_deploy.data import resources
    except Exception as exc:  # noqa: BLE001
        return [Check("data", False, None, _first_line(exc), "the demo and the real-data tests", "reinstall")]
    for name, locate, disables, key in (
            ("fashion-mnist", resources.fashion_mnist_dir, "the bundled model's accuracy, int8 calibration tests",
             "fashion-mnist"),
            ("foolbox-images", resources.foolbox_data_dir, "fp16 verification on real ImageNet photos", "foolbox"),
            ("mv2-weights", resources.mv2_weights_path, "the ImageNet MV2 model", "mv2-weights")):
        try:
            where = locate()
            checks.append(Check(name, True, None, str(where)))
        except Exception as exc:  # noqa: BLE001
            checks.append(Check(name, False, None, _first_line(exc), disables, resources.INSTALL.get(key, "")))
    return checks


def check_cpu_int8() -> Check:
    """The CPU's int8 instructions and what they mean for ``convert --precision int8 --target ort``."""
    from ulsam_deploy.backends.onnxrt.cpu import int8_capabilities, ort_int8_recipe

    caps = int8_capabilities()
    recipe = ort_int8_recipe(caps)
    meaning = ("ONNX Runtime's U8S8 kernels are exact here; --target ort quantizes 8-bit weights" if caps.exact_u8s8
               else "ONNX Runtime's U8S8 kernels use VPMADDUBSW here, which saturates 8-bit weights; --target ort "
                    "quantizes 7-bit weights (reduce_range), as ONNX Runtime advises")
    return Check("cpu-int8", True, caps.machine, f"{caps.summary()}: {meaning}",
                 "" if caps.avx2 or caps.arm_dotprod or caps.vnni else "fast int8 on ONNX Runtime CPU",
                 "" if caps.exact_u8s8 else f"(recipe: {recipe.reason})")


def run_doctor(include_data: bool = True) -> Report:
    report = Report()
    report.checks.append(check_python())
    report.checks.append(check_torch())
    report.checks.append(check_simple("onnx", "onnx", "everything ONNX", "pip install onnx", optional=False))
    report.checks.append(check_found("onnxsim", "onnxsim", "export's simplification (use --no-simplify)",
                                     install_command("onnxsim")))
    report.checks.append(check_onnxruntime())
    report.checks.append(check_cpu_int8())
    report.checks.append(check_found("onnxruntime-extensions", "onnxruntime_extensions",
                                     "running fused (SubspaceAttention) ONNX on ONNX Runtime (fuse's parity proof, "
                                     "bench of fused graphs)",
                                     "pip install onnxruntime-extensions (a base dependency)"))
    report.checks.append(check_simple("onnxconverter-common", "onnxconverter_common",
                                      "nothing (convert --precision fp16 falls back to onnxruntime's copy)",
                                      "pip install onnxconverter-common"))
    jetson = check_jetson()
    if jetson is not None:
        report.checks.append(jetson)
    trt = check_tensorrt()
    report.checks.append(trt)
    report.checks.extend(check_cuda_driver())
    report.checks.append(check_kernel_images())
    report.checks.append(check_triton())
    report.checks.append(check_plugin_library())
    report.checks.append(check_python_plugin(trt))
    if include_data:
        report.checks.extend(check_data())
    return report


__all__ = ["Check", "Report", "check_jetson", "run_doctor"]
