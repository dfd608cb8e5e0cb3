"""``ulsam-deploy doctor``: every component reported with version or reason, what it disables, how to get it."""

from __future__ import annotations

from pathlib import Path

import json
import os
import re

import pytest

from ulsam_deploy.cli import app
from ulsam_deploy.doctor import run_doctor

EXPECTED = {"python", "torch", "onnx", "onnxsim", "onnxruntime", "onnxruntime-extensions", "onnxconverter-common",
            "cpu-int8", "tensorrt", "cuda-driver", "gpu", "kernel-images", "triton", "plugin-library", "python-plugin"}


def test_report_covers_every_component():
    report = run_doctor(include_data=False)
    names = [c.name for c in report.checks]
    assert set(names) == EXPECTED and len(names) == len(set(names))
    for check in report.checks:
        if check.ok:
            continue
        assert check.detail, check.name  # why it is missing
        assert check.disables and check.fix, check.name  # what that costs and how to get it


def test_versions_match_the_environment():
    import onnx
    import onnxruntime
    import torch

    report = run_doctor(include_data=False)
    assert report.get("torch").version == torch.__version__ and report.get("torch").ok
    assert report.get("onnx").version == onnx.__version__
    ort = report.get("onnxruntime")
    assert ort.version == onnxruntime.__version__ and "CPUExecutionProvider" in ort.detail


def test_tensorrt_and_gpu_probed_for_real():
    from ulsam_deploy.backends.trt.cuda import probe_cuda_driver

    report = run_doctor(include_data=False)
    try:
        import tensorrt

        assert report.get("tensorrt").ok and report.get("tensorrt").version == tensorrt.__version__
    except ImportError:
        trt = report.get("tensorrt")
        assert not trt.ok
        assert "pip install tensorrt" in trt.fix or "python3-libnvinfer" in trt.fix
        assert "build-trt" in trt.disables
    driver = probe_cuda_driver()
    # an independent witness of a GPU: the kernel driver's own file, not the library call doctor makes
    assert report.get("gpu").ok == Path("/proc/driver/nvidia/version").exists()
    if not driver.available:
        assert report.get("gpu").detail == driver.error


def test_plugin_library_found_through_env(tmp_path, monkeypatch):
    lib = tmp_path / "libulsam_subspace_attention_plugin.so"
    monkeypatch.setenv("ULSAM_PLUGIN_LIBRARY", str(lib))
    monkeypatch.chdir(tmp_path)
    assert not run_doctor(include_data=False).get("plugin-library").ok
    lib.write_bytes(b"\x7fELF")
    check = run_doctor(include_data=False).get("plugin-library")
    assert check.ok and str(lib) in check.detail


def test_cli_table_and_json(cli_runner):
    result = cli_runner.invoke(app, ["doctor", "--no-data"])
    assert result.exit_code == 0, result.output
    for name in ("onnxruntime", "tensorrt", "gpu", "triton", "plugin-library"):
        assert name in result.output
    assert "available" in result.output
    result = cli_runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    names = {c["name"] for c in data["checks"]}
    assert EXPECTED <= names and "fashion-mnist" in names
    assert set(data["summary"]["ok"]) | set(data["summary"]["missing"]) == names


def test_kernel_images_against_driver_and_gpu():
    """doctor says what the launcher will load: native cubin, PTX JIT, or nothing (old driver/GPU)."""
    from ulsam_deploy.backends.trt.cuda import CudaDriverInfo, GpuInfo
    from ulsam_deploy.doctor import check_kernel_images

    def info(version, cc):
        return CudaDriverInfo(True, version, [GpuInfo(0, "Test GPU", cc, 8 << 30, False)], "libcuda.so.1")

    orin = check_kernel_images(info("12.6", "8.7"))
    assert orin.ok and "cubin native" in orin.detail and "PTX ISA 8.0" in orin.version
    blackwell = check_kernel_images(info("12.8", "12.0"))
    assert blackwell.ok and "PTX JIT" in blackwell.detail
    r520 = check_kernel_images(info("11.8", "8.6"))
    assert not r520.ok and "will not load" in r520.detail and "R525" in r520.fix and r520.disables
    xavier = check_kernel_images(info("12.2", "7.2"))
    assert not xavier.ok and "sm_72" in xavier.detail and "7.5" in xavier.fix
    none = check_kernel_images(CudaDriverInfo(False, error="no NVIDIA driver"))
    assert none.ok and "cannot tell" in none.detail


@pytest.mark.trt_api
def test_doctor_says_which_tensorrt_and_from_where(trt):
    """On the bindings matrix: a pip wheel installed with --target outside this environment."""
    from ulsam_deploy.doctor import check_tensorrt

    check = check_tensorrt()
    assert check.ok and check.version == trt.__version__
    assert check.detail.startswith(f"{trt.__file__} (")
    if os.environ.get("ULSAM_TRT_BINDINGS"):
        assert re.search(rf"; distribution tensorrt[-_]cu1\d[-_]bindings {re.escape(trt.__version__)}\)", check.detail)
        assert "outside this environment" in check.detail


def test_doctor_names_the_cpu_int8_instructions_and_their_meaning(monkeypatch):
    from ulsam_deploy.backends.onnxrt import cpu
    from ulsam_deploy.doctor import check_cpu_int8

    monkeypatch.setattr(cpu, "_cpu_flags", lambda: {"avx2", "fma"})
    avx2 = check_cpu_int8()
    assert avx2.detail.startswith("AVX2: ") and "reduce_range" in avx2.detail and "VPMADDUBSW" in avx2.detail
    monkeypatch.setattr(cpu, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    vnni = check_cpu_int8()
    assert "AVX-512 VNNI" in vnni.detail and "exact here" in vnni.detail and "8-bit weights" in vnni.detail


def _board(root, release: str | None, model: bytes | None):
    if release is not None:
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "etc" / "nv_tegra_release").write_text(release)
    if model is not None:
        (root / "proc" / "device-tree").mkdir(parents=True, exist_ok=True)
        (root / "proc" / "device-tree" / "model").write_bytes(model)
    return str(root)


def test_jetson_row_names_board_jetpack_and_power_mode(tmp_path):
    """JetPack 6.1/6.2 (L4T R36.4) passes with its power mode; 6.0 (R36.3, TensorRT 8.6) is refused; off-board no row."""
    from ulsam_deploy.doctor import check_jetson

    assert check_jetson(str(tmp_path / "x86"), power_mode=lambda: None) is None
    orin = _board(tmp_path / "nano", "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n",
                  b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00")
    check = check_jetson(orin, power_mode=lambda: "MAXN_SUPER (2)")
    assert check.ok and check.version == "L4T R36.4.3"
    assert check.detail.startswith("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super; L4T R36.4.3; "
                                   "JetPack 6.1/6.2 (TensorRT 10.3); power mode MAXN_SUPER (2);")
    assert "jetson_clocks" in check.detail
    old = _board(tmp_path / "agx", "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic\n",
                 b"Jetson AGX Orin\x00")
    check = check_jetson(old, power_mode=lambda: None)
    assert not check.ok and "JetPack 6.0 (TensorRT 8.6)" in check.detail and "power mode unknown" in check.detail
    assert check.disables.startswith("build-trt") and "6.1 or 6.2" in check.fix
    unknown = check_jetson(_board(tmp_path / "dt", None, b"NVIDIA Jetson AGX Orin\x00"), power_mode=lambda: None)
    assert unknown.ok and "L4T release unknown" in unknown.detail


def test_power_mode_parses_nvpmodel(tmp_path, monkeypatch):
    from ulsam_deploy import doctor

    exe = tmp_path / "nvpmodel"
    exe.write_text("#!/bin/sh\necho 'NV Power Mode: MAXN'\necho 0\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert doctor._power_mode() == "MAXN (0)"
    exe.write_text("#!/bin/sh\necho 'permission denied' >&2\nexit 1\n")
    assert doctor._power_mode() is None


@pytest.mark.trt_api
def test_doctor_json_stays_parseable_with_tensorrt(trt):
    """Importing tensorrt.plugin prints TensorRT's 'experimental' warning on stdout: doctor only looks for it."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ulsam_deploy", "doctor", "--json", "--no-data"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["tensorrt"]["ok"] and checks["tensorrt"]["version"] == trt.__version__
    if hasattr(trt, "__version__") and tuple(int(p) for p in trt.__version__.split(".")[:2]) >= (10, 6):
        assert "tensorrt.plugin (QDP)" in checks["tensorrt"]["detail"]
