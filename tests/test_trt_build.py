"""build-trt without TensorRT: engine sidecar compatibility logic, option mapping (fake builder), error paths.

A fake ``tensorrt`` module here only checks OUR mapping from options to builder calls; it proves
nothing about engines building. Real builds are in the ``tensorrt``-marked tests at the end, which
skip (with the reason) where TensorRT or a GPU is absent.
"""

from __future__ import annotations

import json

import pytest

from ulsam_deploy.errors import UserError
from ulsam_deploy.trt.compat import (ENGINE_SIDECAR_FORMAT, EngineMismatch, RuntimeInfo, check_engine_compat,
                                     read_engine_sidecar)
from ulsam_deploy.trt.cuda_driver import GpuInfo

ORIN = GpuInfo(0, "Orin (nvgpu)", "8.7", 0, True)
RTX4090 = GpuInfo(0, "NVIDIA GeForce RTX 4090", "8.9", 24 << 30, False)
L4 = GpuInfo(0, "NVIDIA L4", "8.9", 24 << 30, False)
A100 = GpuInfo(0, "NVIDIA A100-SXM4-40GB", "8.0", 40 << 30, False)


def engine_sidecar(version="10.3.0.30", gpu=ORIN, **build) -> dict:
    return {"format": ENGINE_SIDECAR_FORMAT, "engine": "model.engine",
            "rebuild_command": "ulsam-deploy build-trt model.onnx -o model.engine --batch 1:8:32",
            "tensorrt": {"version": version}, "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability},
            "build": build}


# ------------------------------------------------------------------------------------ compat


def test_same_tensorrt_and_gpu_is_accepted():
    check_engine_compat(engine_sidecar(), runtime=RuntimeInfo("10.3.0.30", ORIN))


@pytest.mark.parametrize("running", ["10.3.0.26", "10.4.0.26", "11.1.0.5"])
def test_other_tensorrt_version_is_refused_with_rebuild_command(running):
    with pytest.raises(EngineMismatch) as err:
        check_engine_compat(engine_sidecar(), runtime=RuntimeInfo(running, ORIN))
    message = str(err.value)
    assert "10.3.0.30" in message and running in message and "TensorRT version" in message
    assert message.endswith("ulsam-deploy build-trt model.onnx -o model.engine --batch 1:8:32")
    assert "\n" not in message and err.value.exit_code != 0


def test_other_gpu_architecture_is_refused():
    with pytest.raises(EngineMismatch, match=r"sm_87.*sm_89.*GPU architecture"):
        check_engine_compat(engine_sidecar(), runtime=RuntimeInfo("10.3.0.30", RTX4090))


def test_both_differences_named():
    with pytest.raises(EngineMismatch, match="TensorRT version and GPU"):
        check_engine_compat(engine_sidecar(), runtime=RuntimeInfo("10.7.0.23", RTX4090))


def test_same_architecture_other_model_only_warns():
    warnings = []
    check_engine_compat(engine_sidecar("10.7.0.23", RTX4090), runtime=RuntimeInfo("10.7.0.23", L4), warn=warnings.append)
    assert len(warnings) == 1 and "L4" in warnings[0]


def test_version_compatible_engine_runs_on_newer_same_major_only():
    sidecar = engine_sidecar("10.3.0.30", A100, version_compatible=True)
    check_engine_compat(sidecar, runtime=RuntimeInfo("10.7.0.23", A100))
    with pytest.raises(EngineMismatch):
        check_engine_compat(sidecar, runtime=RuntimeInfo("10.2.0.19", A100))
    with pytest.raises(EngineMismatch):
        check_engine_compat(sidecar, runtime=RuntimeInfo("11.1.0.5", A100))


def test_ampere_plus_engine_runs_on_any_cc8_gpu():
    sidecar = engine_sidecar("10.7.0.23", A100, hardware_compatibility_level="AMPERE_PLUS")
    check_engine_compat(sidecar, runtime=RuntimeInfo("10.7.0.23", RTX4090))
    with pytest.raises(EngineMismatch):
        check_engine_compat(sidecar, runtime=RuntimeInfo("10.7.0.23", GpuInfo(0, "Tesla T4", "7.5", 0, False)))


def test_no_gpu_is_refused():
    with pytest.raises(EngineMismatch, match="needs an NVIDIA GPU"):
        check_engine_compat(engine_sidecar(), runtime=RuntimeInfo("10.3.0.30", None))


def test_incomplete_sidecar_is_refused():
    sidecar = engine_sidecar()
    del sidecar["gpu"]
    with pytest.raises(EngineMismatch, match="does not record"):
        check_engine_compat(sidecar, runtime=RuntimeInfo("10.3.0.30", ORIN))


def test_sidecar_read_from_engine_path(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0")
    with pytest.raises(UserError, match="missing"):
        read_engine_sidecar(engine)
    (tmp_path / "m.engine.json").write_text("{not json")
    with pytest.raises(UserError, match="not readable JSON"):
        read_engine_sidecar(engine)
    (tmp_path / "m.engine.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="not an engine sidecar"):
        read_engine_sidecar(engine)
    (tmp_path / "m.engine.json").write_text(json.dumps(engine_sidecar()))
    check_engine_compat(engine, runtime=RuntimeInfo("10.3.0.30", ORIN))


def test_changed_plugin_library_warns(tmp_path):
    lib = tmp_path / "libulsam_plugin.so"
    lib.write_bytes(b"v2")
    sidecar = engine_sidecar()
    sidecar["plugin"] = {"route": "lib", "library": str(lib), "library_sha256": "0" * 64}
    warnings = []
    check_engine_compat(sidecar, runtime=RuntimeInfo("10.3.0.30", ORIN), warn=warnings.append)
    assert any("changed" in w for w in warnings)
    lib.unlink()
    warnings.clear()
    check_engine_compat(sidecar, runtime=RuntimeInfo("10.3.0.30", ORIN), warn=warnings.append)
    assert any("not there" in w for w in warnings)


def test_probing_without_tensorrt_says_how_to_install():
    pytest.importorskip("ulsam_deploy")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install tensorrt|python3-libnvinfer"):
            check_engine_compat(engine_sidecar())
    else:
        pytest.skip("TensorRT is installed here; the missing-TensorRT path is not reachable")
