"""The TensorRT-facing tests on TensorRT's real Python bindings: one pytest subprocess per version.

Each subprocess imports the real bindings of one version (10.3.0 = JetPack 6's API, the newest
10.x, the newest 11.x; tests/trt_bindings.py installs them from PyPI into a cache) over stub
libnvinfer/libnvonnxparser/libnvinfer_plugin, and runs every ``trt_api`` test of the TensorRT test
modules. None of them may skip there. This is still not TensorRT building an engine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trt_bindings import ACTIVE_ENV, VERSIONS, install, prepare, stubs

TESTS = Path(__file__).parent
MODULES = ("test_trt_build.py", "test_bench_trt.py", "test_trt_python_plugin.py", "test_doctor.py")
inside_matrix = pytest.mark.skipif(bool(os.environ.get(ACTIVE_ENV)), reason="already inside the bindings matrix")


@pytest.mark.slow
@inside_matrix
@pytest.mark.parametrize("version", list(VERSIONS), ids=[f"{v} ({why})" for v, why in VERSIONS.items()])
def test_trt_api_tests_on_real_bindings(version):
    env = prepare(version)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "trt_api", "-p", "no:cacheprovider",
                           "-o", "addopts=-ra", *[str(TESTS / m) for m in MODULES]],
                          cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    tail = "\n".join(output.strip().splitlines()[-40:])
    assert proc.returncode == 0, f"TensorRT {version} bindings ({seconds:.1f} s):\n{tail}"
    summary = output.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 20, f"TensorRT {version}: too few trt_api tests ran: {summary}"
    assert not re.search(r"skipped|xfail|error", summary), \
        f"TensorRT {version}: every trt_api test must run on the real bindings: {summary}\n{tail}"


@inside_matrix
def test_import_tensorrt_finds_jetpack_bindings(tmp_path):
    """JetPack's layout (/usr/lib/python3.X/dist-packages/tensorrt, python3-libnvinfer) seen through system
    site-packages: import_tensorrt adds the folder when the venv's Python does not, and doctor names it."""
    version = "10.3.0"
    env = prepare(version)
    site = install(version)
    here = f"python{sys.version_info.major}.{sys.version_info.minor}"
    dist = tmp_path / "usr" / "lib" / here / "dist-packages"
    dist.mkdir(parents=True)
    (dist / "tensorrt").symlink_to(site / "tensorrt_bindings", target_is_directory=True)
    other = tmp_path / "other" / "usr" / "lib" / "python3.8" / "dist-packages"
    other.mkdir(parents=True)
    (other / "tensorrt").symlink_to(site / "tensorrt_bindings", target_is_directory=True)
    env["PYTHONPATH"] = env["PYTHONPATH"].split(os.pathsep, 2)[2]  # neither the alias nor the pip target
    env["LD_LIBRARY_PATH"] = str(stubs(10))
    script = f"""
import json, sys
from ulsam_deploy.backends.trt import runtime
from ulsam_deploy import doctor
out = {{}}
for key, root, site in (("no-site", {str(tmp_path)!r}, False), ("wrong-python", {str(tmp_path / 'other')!r}, True),
                        ("absent", {str(tmp_path / 'nothing')!r}, True)):
    try:
        runtime.import_tensorrt(system_root=root, system_site=site)
    except runtime.TensorRTUnavailable as exc:
        out[key] = str(exc)
trt = runtime.import_tensorrt(system_root={str(tmp_path)!r}, system_site=True)
out["version"], out["file"] = trt.__version__, trt.__file__
out["origin"] = runtime.tensorrt_origin(trt)
out["doctor"] = doctor.check_tensorrt().detail
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["version"] == version and out["file"] == str(dist / "tensorrt" / "__init__.py")
    assert out["origin"]["system"] and "python3-libnvinfer" in out["origin"]["where"]
    assert out["doctor"].startswith(f"{dist / 'tensorrt' / '__init__.py'} (the system's python3-libnvinfer package")
    assert out["no-site"] == (f"JetPack's TensorRT bindings are in {dist} but this venv does not see system "
                              "site-packages; recreate it with 'python3 -m venv --system-site-packages .venv'.")
    assert out["wrong-python"].startswith(f"JetPack's TensorRT bindings in {other} are for python3.8 and this is {here}")
    assert out["absent"].startswith("TensorRT's Python package is not installed; install it: ")


@pytest.mark.slow
@inside_matrix
def test_unreachable_index_is_a_skip_reason_not_a_failure(tmp_path, monkeypatch):
    """Without PyPI, preparing the bindings raises Unavailable (prepare() turns that into a skip with it)."""
    from trt_bindings import Unavailable

    monkeypatch.setenv("ULSAM_TRT_BINDINGS_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-links"))
    with pytest.raises(Unavailable) as err:
        install("10.3.0")
    message = str(err.value)
    assert message.startswith("could not install TensorRT 10.3.0's Python bindings from PyPI (tensorrt-cu12-bindings: ")
    assert "tensorrt-cu13-bindings: " in message and not (tmp_path / "10.3.0").exists()
