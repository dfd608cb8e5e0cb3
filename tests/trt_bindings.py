"""TensorRT's real Python bindings in the test suite, over stub libraries we compile.

PyPI has TensorRT's Python bindings as small wheels (``tensorrt-cu12-bindings``, package
``tensorrt_bindings``). Their ``tensorrt.so`` needs ``libnvinfer.so.N``, ``libnvonnxparser.so.N`` and
``libnvinfer_plugin.so.N`` but imports only nine C entry points from them; ``tests/stubs/*.c``
define those (returning null / 0 / true). With them on ``LD_LIBRARY_PATH`` and the package
aliased as ``tensorrt``, every class, enum, signature and docstring is TensorRT's own, and
``tensorrt.plugin`` (pure Python) runs for real. No engine can be built that way.

Everything is cached under ``$ULSAM_TRT_BINDINGS_CACHE`` (default
``~/.cache/ulsam-deploy/trt-bindings``): ``<version>/`` (pip ``--target``, reusing pip's own cache),
``stubs/<major>/`` and ``alias/tensorrt.py``. :func:`prepare` skips the calling test with the
reason where PyPI or a C compiler is not reachable.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

#: version -> why it is in the matrix (pinned so results repeat; bump when NVIDIA ships newer ones)
VERSIONS = {
    "10.3.0": "JetPack 6's TensorRT API",
    "10.16.1.11": "newest TensorRT 10 on PyPI",
    "11.4.0.106": "newest TensorRT 11 on PyPI",
}
ACTIVE_ENV = "ULSAM_TRT_BINDINGS"  # set in a matrix subprocess: the bindings version it runs on
CACHE_ENV = "ULSAM_TRT_BINDINGS_CACHE"
STUBS = Path(__file__).parent / "stubs"
LIBRARIES = {"libnvinfer": "nvinfer.c", "libnvonnxparser": "nvonnxparser.c", "libnvinfer_plugin": "nvinfer_plugin.c"}
ALIAS = "import sys\nimport tensorrt_bindings\n\nsys.modules[__name__] = tensorrt_bindings\n"


class Unavailable(Exception):
    """The bindings cannot be prepared here (no PyPI, no pip, no C compiler)."""


def cache_root() -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ulsam-deploy" / "trt-bindings")
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def _locked(root: Path):
    """One preparer at a time (colleagues' runs and xdist workers share the cache)."""
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tail(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def install(version: str) -> Path:
    """The folder holding ``tensorrt_bindings`` for ``version`` (pip --target into the cache)."""
    root = cache_root()
    target = root / version
    if (target / "tensorrt_bindings" / "__init__.py").is_file():
        return target
    with _locked(root):
        if (target / "tensorrt_bindings" / "__init__.py").is_file():
            return target
        errors = []
        for dist in ("tensorrt-cu12-bindings", "tensorrt-cu13-bindings"):
            scratch = root / f".{version}.{os.getpid()}"
            shutil.rmtree(scratch, ignore_errors=True)
            cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
                   "--no-input", "--target", str(scratch), f"{dist}=={version}"]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
            except (OSError, subprocess.TimeoutExpired) as exc:
                errors.append(f"{dist}: {type(exc).__name__}")
                continue
            if proc.returncode == 0 and (scratch / "tensorrt_bindings" / "__init__.py").is_file():
                shutil.rmtree(target, ignore_errors=True)
                os.replace(scratch, target)
                return target
            shutil.rmtree(scratch, ignore_errors=True)
            errors.append(f"{dist}: {_tail(proc.stdout + proc.stderr)}")
        raise Unavailable(f"could not install TensorRT {version}'s Python bindings from PyPI ({'; '.join(errors)})")


def compile_library(source: Path, output: Path, soname: str) -> Path:
    """``cc -shared`` one stub; rebuilt when the source is newer than the cached library."""
    if output.is_file() and output.stat().st_mtime >= source.stat().st_mtime:
        return output
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise Unavailable("no C compiler (cc) to build the stub libraries")
    output.parent.mkdir(parents=True, exist_ok=True)
    scratch = output.with_name(f".{output.name}.{os.getpid()}")
    proc = subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(scratch), str(source),
                           f"-Wl,-soname,{soname}"], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise Unavailable(f"cc could not build {source.name}: {_tail(proc.stderr)}")
    os.replace(scratch, output)
    return output


def stubs(major: int) -> Path:
    """The folder with libnvinfer.so.N, libnvonnxparser.so.N and libnvinfer_plugin.so.N for ``major``."""
    root = cache_root()
    folder = root / "stubs" / str(major)
    with _locked(root):
        for lib, source in LIBRARIES.items():
            compile_library(STUBS / source, folder / f"{lib}.so.{major}", f"{lib}.so.{major}")
    return folder


def libcuda_stub() -> Path:
    """A host-memory libcuda (tests/stubs/libcuda.c) for the ctypes CUDA driver code."""
    root = cache_root()
    with _locked(root):
        return compile_library(STUBS / "libcuda.c", root / "stubs" / "cuda" / "libcuda.so.1", "libcuda.so.1")


def alias_dir() -> Path:
    """A folder whose ``tensorrt.py`` makes ``import tensorrt`` return ``tensorrt_bindings``."""
    folder = cache_root() / "alias"
    folder.mkdir(exist_ok=True)
    shim = folder / "tensorrt.py"
    if not shim.is_file() or shim.read_text() != ALIAS:
        scratch = folder / f".tensorrt.{os.getpid()}"
        scratch.write_text(ALIAS)
        os.replace(scratch, shim)
    return folder


def package_root() -> Path:
    """The folder holding the ``ulsam_deploy`` under test (the subprocess must import the same one)."""
    import ulsam_deploy

    return Path(ulsam_deploy.__file__).resolve().parent.parent


def environment(version: str) -> dict:
    """Environment for a Python subprocess that imports ``version``'s bindings as ``tensorrt``."""
    site = install(version)
    libs = stubs(int(version.split(".")[0]))
    env = dict(os.environ)
    paths = [str(alias_dir()), str(site), str(package_root())]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(libs)] + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH")
                                                            else []))
    env[ACTIVE_ENV] = version
    env.pop("PYTEST_ADDOPTS", None)
    return env


def prepare(version: str) -> dict:
    """:func:`environment`, or skip the calling test with the reason."""
    try:
        return environment(version)
    except Unavailable as exc:
        pytest.skip(str(exc))


def real_tensorrt():
    """``tensorrt`` when it is TensorRT's real module (matrix subprocess or a real install), else skip."""
    try:
        import tensorrt
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything
        pytest.skip(f"needs TensorRT's Python bindings ({type(exc).__name__}); these tests run once per TensorRT "
                    "version in tests/test_trt_bindings.py")
    if not hasattr(tensorrt, "IBuilderConfig"):
        pytest.skip("the importable 'tensorrt' is not TensorRT's module")
    expected = os.environ.get(ACTIVE_ENV)
    if expected and tensorrt.__version__ != expected:
        raise AssertionError(f"the matrix asked for TensorRT {expected} bindings but imported {tensorrt.__version__}")
    return tensorrt
