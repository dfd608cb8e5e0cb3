"""export: ONNX that is simplified, checked, dynamic in batch and proven equal to PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from helpers import randomize_bn
from helpers import PAPER_CONFIGS
from ulsam_deploy.errors import ParityError, UserError
from ulsam_deploy.steps.export import ExportOptions, export_checkpoint
from ulsam_deploy.artifacts import sha256_file
from ulsam_deploy.sidecars import read_onnx_sidecar
from ulsam_deploy.onnx_graph import ort_max_ir_version
from ulsam_deploy.models import build_model, save_checkpoint


def _checkpoint(tmp_path, arch="mv2", width=0.5, ulsam="14,17:1", groups=4, size=96, name="ck.pt", **kw):
    torch.manual_seed(0)  # the same weights in every run and order (the attention-spread check below depends on them)
    model = randomize_bn(build_model(arch, width, ulsam, groups=groups, num_classes=10, input_size=size, **kw))
    return save_checkpoint(model, tmp_path / name, class_names=[f"c{i}" for i in range(10)]), model.eval()


def _ort(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.parametrize("arch,width,ulsam", PAPER_CONFIGS)
def test_every_paper_configuration_exports_and_matches(tmp_path, arch, width, ulsam):
    ck, model = _checkpoint(tmp_path, arch, width, ulsam, size=96)
    result = export_checkpoint(ck, tmp_path / "m.onnx")
    assert result.verdict.max_abs < 1e-4
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.op_type for o in proto.graph.node}.isdisjoint({"BatchNormalization", "Constant", "Identity"})
    assert sum(o.op_type == "Softmax" for o in proto.graph.node) == len(ulsam.split(","))


def test_fixture_attention_is_not_uniform(tmp_path):
    """Parity on a model whose ULSAM maps are uniform would prove nothing about ULSAM."""
    from helpers import attention_spread

    _, model = _checkpoint(tmp_path)
    seen = {}
    # the hook returns None, so the block's output stays its own
    hook = model.features[13].register_forward_hook(lambda m, i, o: seen.__setitem__("x", i[0]))
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0)))
    hook.remove()
    assert attention_spread(model.features[13], seen["x"]) > 1e-2


def test_dynamic_batch_and_names(tmp_path):
    ck, model = _checkpoint(tmp_path)
    result = export_checkpoint(ck, tmp_path / "m.onnx")
    sess = _ort(result.path)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "input" and out.name == "logits" and inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 96, 96]
    for batch in (1, 5, 16):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 96, 96)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = sess.run(None, {"input": x})[0]
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_static_batch(tmp_path):
    ck, _ = _checkpoint(tmp_path)
    result = export_checkpoint(ck, tmp_path / "m.onnx", ExportOptions(batch=2))
    assert _ort(result.path).get_inputs()[0].shape == [2, 3, 96, 96]
    assert [o.name for o in result.verdict.outputs] == ["batch 2"]


def test_sidecar_describes_the_model(tmp_path):
    ck, _ = _checkpoint(tmp_path)
    result = export_checkpoint(ck, tmp_path / "m.onnx", ExportOptions(opset=18))
    side = json.loads(result.sidecar_path.read_text())
    assert result.sidecar_path.name == "m.onnx.json"
    assert side["schema"] == "ulsam-deploy/onnx" and side["version"] == 2
    assert side["sha256"] == sha256_file(result.path)
    assert side["model"]["config"]["ulsam"] == "14,17:1" and side["model"]["config"]["groups"] == 4
    assert side["model"]["checkpoint"] == str(ck.resolve()) and side["model"]["checkpoint_sha256"] == sha256_file(ck)
    assert side["inputs"][0]["shape"] == ["batch", 3, 96, 96] and side["model"]["class_names"][3] == "c3"
    assert side["outputs"][0] == {"name": "logits", "shape": ["batch", 10], "dtype": "float32", "layer": None,
                                  "stride": None, "channels": None}
    assert side["graph"]["opset"] == 18 and side["graph"]["ir_version"] <= ort_max_ir_version()
    (step,) = side["steps"]
    assert step["step"] == "export" and step["verdict"]["passed"]
    assert [o["name"] for o in step["verdict"]["outputs"]] == ["batch 1", "batch 3"]
    assert step["verdict"]["max_abs"] < 1e-4
    assert {"torch", "onnx", "onnxruntime", "onnxsim"} <= set(step["versions"])
    assert side["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    assert read_onnx_sidecar(result.path).model.config == side["model"]["config"]  # what later steps read back


@pytest.mark.slow
def test_export_form_keeps_node_count_independent_of_groups(tmp_path):
    counts = {}
    for g in (1, 16):
        ck, _ = _checkpoint(tmp_path, ulsam="14,17:1", groups=g, name=f"g{g}.pt")
        counts[g] = export_checkpoint(ck, tmp_path / f"g{g}.onnx").sidecar.graph["nodes"]
    assert counts[1] == counts[16]


@pytest.mark.slow
def test_no_simplify_still_matches(tmp_path):
    ck, _ = _checkpoint(tmp_path)
    result = export_checkpoint(ck, tmp_path / "m.onnx", ExportOptions(simplify=False))
    assert result.verdict.max_abs < 1e-4


@pytest.mark.slow
def test_existing_output_needs_force(tmp_path):
    ck, _ = _checkpoint(tmp_path)
    export_checkpoint(ck, tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    with pytest.raises(UserError, match="already exists; pass --force"):
        export_checkpoint(ck, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == before
    export_checkpoint(ck, tmp_path / "m.onnx", ExportOptions(force=True))


def test_parity_failure_writes_nothing(tmp_path, monkeypatch):
    import ulsam_deploy.models.ulsam as ulsam_mod

    real = ulsam_mod.to_export_form

    def broken(model):
        deploy = real(model)
        with torch.no_grad():
            deploy.classifier[1].bias += 0.01  # a real, small deviation the parity check must catch
        return deploy

    monkeypatch.setattr(ulsam_mod, "to_export_form", broken)
    ck, _ = _checkpoint(tmp_path)
    with pytest.raises(ParityError, match="differs from PyTorch"):
        export_checkpoint(ck, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


@pytest.mark.parametrize("kwargs,needle", [({"opset": 5}, "Opset 5"), ({"batch": 0}, "--static-batch"),
                                           ({"exporter": "magic"}, "exporter"), ({"atol": 0}, "--atol")])
def test_bad_options(kwargs, needle):
    with pytest.raises(UserError, match=needle):
        ExportOptions(**kwargs)


@pytest.mark.slow
def test_dynamo_exporter_matches_too(tmp_path):
    ck, _ = _checkpoint(tmp_path, ulsam="14", size=64)
    result = export_checkpoint(ck, tmp_path / "m.onnx", ExportOptions(exporter="dynamo", opset=18))
    assert result.verdict.max_abs < 1e-4
