"""``ulsam-deploy doctor``: every component reported with version or reason, what it disables, how to get it."""

from __future__ import annotations

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
    assert report.get("gpu").ok == driver.available
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
