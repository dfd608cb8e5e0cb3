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
import sys
from dataclasses import asdict, dataclass, field


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


def check_torch() -> Check:
    mod, err = _import("torch")
    if mod is None:
        return Check("torch", False, None, err or "", "train, export, the PyTorch reference",
                     "scripts/setup.sh (CPU wheel) or pip install torch", optional=False)
    cuda = getattr(mod.version, "cuda", None)
    gpu = False
    try:
        gpu = bool(mod.cuda.is_available())
    except Exception:  # noqa: BLE001
        pass
    detail = f"CUDA build {cuda}, GPU {'visible' if gpu else 'not visible'}" if cuda else "CPU build"
    return Check("torch", True, mod.__version__, detail, optional=False)


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
    try:
        importlib.import_module("tensorrt.plugin")
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
        return Check("triton", False, None, "not installed", "the Triton kernel (CPU interpreter tests, PTX generation)",
                     "pip install 'ulsam-deploy[kernels]' (triton)")
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
    report.checks.append(check_simple("onnxsim", "onnxsim", "export's simplification (use --no-simplify)",
                                      "pip install onnxsim"))
    report.checks.append(check_onnxruntime())
    report.checks.append(check_cpu_int8())
    report.checks.append(check_simple("onnxruntime-extensions", "onnxruntime_extensions",
                                      "running fused (SubspaceAttention) ONNX on ONNX Runtime",
                                      "pip install 'ulsam-deploy[kernels]'"))
    report.checks.append(check_simple("onnxconverter-common", "onnxconverter_common",
                                      "nothing (convert --precision fp16 falls back to onnxruntime's copy)",
                                      "pip install onnxconverter-common"))
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


__all__ = ["Check", "Report", "run_doctor"]
