"""Precision passes (fp16, int8 Q/DQ) on ONNX Runtime CPU, verified on real images.

- fp16: the bundled ImageNet MV2 + ULSAM on foolbox's 20 real ImageNet photos (top-1 agreement >= 99.5 %).
- int8: the bundled Fashion-MNIST model on a slice of the real test set (accuracy within 1 point of fp32),
  calibrated on real training images; skipped (with the reason) until that model is bundled.
- structure: what stays fp32, symmetric zero points, per-channel weights, float biases, ULSAM kept out.
- every error path: one sentence, nothing written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from PIL import Image

from ulsam_deploy.errors import ParityError, UserError
from ulsam_deploy.passes import precision as P
from ulsam_deploy.data.evalset import EvalSet, load_eval_set, preprocess_from_sidecar


def _fashion_mnist_available() -> bool:
    try:
        from ulsam_deploy.data.resources import fashion_mnist_dir

        fashion_mnist_dir()
    except Exception:  # noqa: BLE001
        return False
    return True


needs_fmnist = pytest.mark.skipif(not _fashion_mnist_available(), reason="Fashion-MNIST is not installed "
                                  "(sudo apt-get install dataset-fashion-mnist)")


def _export(model, tmp: Path, name: str, mean, std, preprocess=None) -> Path:
    from ulsam_deploy.steps.export import ExportOptions, export_checkpoint
    from ulsam_deploy.models import save_checkpoint

    ckpt = save_checkpoint(model.eval(), tmp / f"{name}.pt", mean=mean, std=std,
                           **({"preprocess": preprocess} if preprocess else {}))
    return export_checkpoint(ckpt, tmp / f"{name}.onnx", ExportOptions()).onnx_path


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> Path:
    """A small grey MV2 x0.5 + ULSAM (13 replaced, 17:1 inserted: the latter at 1x1), seeded weights, 32x32."""
    from ulsam_deploy.data.images import Preprocess
    from ulsam_deploy.models import build_model

    from helpers import randomize_bn

    torch.manual_seed(0)
    model = randomize_bn(build_model("mv2", 0.5, "13,17:1", 4, 10, 32, in_channels=1))
    pre = Preprocess(32, 1, 1.0, (0.286,), (0.353,))
    return _export(model, tmp_path_factory.mktemp("small"), "small", pre.mean, pre.std, pre.to_dict())


@pytest.fixture(scope="module")
def imagenet_onnx(tmp_path_factory) -> Path:
    """The bundled ImageNet MV2 x1 + ULSAM 17:1 (torchvision weights), exported."""
    from ulsam_deploy import bundled
    from ulsam_deploy.steps.export import ExportOptions, export_checkpoint

    try:
        ckpt = bundled.checkpoint_path("imagenet")
    except UserError as exc:
        pytest.skip(f"bundled ImageNet model unavailable: {exc}")
    out = tmp_path_factory.mktemp("imagenet") / "mv2.onnx"
    return export_checkpoint(ckpt, out, ExportOptions()).onnx_path


@pytest.fixture(scope="module")
def grey_images(tmp_path_factory) -> Path:
    """A small ImageFolder of REAL Fashion-MNIST test images written as PNGs (class folders = class names)."""
    if not _fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed")
    from ulsam_deploy.data.fashion_mnist import CLASSES, load_arrays

    root = tmp_path_factory.mktemp("fm_folder")
    images, labels = load_arrays("test", 60)
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / CLASSES[label].replace("/", "_")
        folder.mkdir(exist_ok=True)
        Image.fromarray(img, mode="L").save(folder / f"{i}.png")
    return root


def _elem_type_of(model: onnx.ModelProto, tensor: str) -> int | None:
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.name == tensor:
            return vi.type.tensor_type.elem_type
    for init in model.graph.initializer:
        if init.name == tensor:
            return init.data_type
    return None


# ------------------------------------------------------------------------------- fp16 figures


def test_fp16_imagenet_mv2_agrees_on_real_photos(imagenet_onnx, tmp_path):
    out = tmp_path / "mv2.fp16.onnx"
    result = P.convert_precision(imagenet_onnx, out, "fp16")  # default verification: foolbox's ImageNet photos
    figures = result.verification
    assert figures["data"]["samples"] == 20 and figures["data"]["labelled"]
    assert figures["top1_agreement"] >= 0.995
    assert figures["gate"]["passed"] and figures["gate"]["threshold"] == 0.995
    assert abs(figures["accuracy_candidate"] - figures["accuracy_reference"]) <= 0.05
    assert 0 < figures["max_abs"] < 1.0  # fp16 really changed the numbers, but not much

    model = onnx.load(out)
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["precision"]["mode"] == "fp16" and sidecar["sha256"] == P.sha256_file(out)
    assert sidecar["precision"]["verification"]["top1_agreement"] == figures["top1_agreement"]
    assert sidecar["precision"]["source"]["onnx"] == "mv2.onnx"
    assert sidecar["input"]["dtype"] == "float32" and sidecar["config"]["num_classes"] == 1000
    # I/O fp32, big weights fp16, ULSAM and softmax/reduction fp32
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    inits = {t.name: t for t in model.graph.initializer}
    conv_weights = [inits[n.input[1]] for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits]
    kept = set(sidecar["precision"]["kept_fp32"]["ulsam_nodes"])
    assert len(kept) >= 10 and sidecar["precision"]["kept_fp32"]["ulsam_blocks"] == 1
    ulsam_convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name in kept]
    assert len(ulsam_convs) == 2 and all(inits[n.input[1]].data_type == TensorProto.FLOAT for n in ulsam_convs)
    assert sum(w.data_type == TensorProto.FLOAT16 for w in conv_weights) == len(conv_weights) - 2
    for node in model.graph.node:
        if node.op_type in ("Softmax", "GlobalAveragePool"):
            assert _elem_type_of(model, node.input[0]) == TensorProto.FLOAT, node.name


def test_fp16_io_fp16_and_sidecar(small_onnx, grey_images, tmp_path):
    out = tmp_path / "io16.onnx"
    verify = load_eval_set(grey_images, preprocess_from_sidecar(json.loads(Path(str(small_onnx) + ".json").read_text())))
    result = P.convert_fp16(small_onnx, out, verify, P.PrecisionOptions(io="fp16"))
    model = onnx.load(out)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert result.sidecar["input"]["dtype"] == "float16" and result.section["io_dtype"] == "float16"
    # runs with fp16 inputs on ONNX Runtime
    logits = P.run_classifier(model, verify.images[:4])
    assert logits.shape == (4, 10) and np.isfinite(logits).all()


def test_onnxruntime_fallback_converter_output_is_valid(small_onnx, monkeypatch):
    """onnxruntime's float16 copy writes one Cast per blocked consumer with the same name; we repair it."""
    import onnxruntime
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    monkeypatch.setattr(P, "_fp16_converter", lambda: (convert_float_to_float16, DEFAULT_OP_BLOCK_LIST,
                                                       f"onnxruntime {onnxruntime.__version__}"))
    converted, kept = P.to_fp16(onnx.load(small_onnx))
    P.check_model(P.fit_ir_version(converted))
    assert kept["ulsam_blocks"] == 2


# ------------------------------------------------------------------------------- int8 figures


@needs_fmnist
def test_int8_bundled_fashion_mnist_within_one_point(tmp_path):
    from ulsam_deploy import bundled
    from ulsam_deploy.data.resources import fashion_mnist_dir
    from ulsam_deploy.steps.export import ExportOptions, export_checkpoint

    try:
        ckpt = bundled.checkpoint_path("fashion-mnist")
    except (UserError, KeyError, FileNotFoundError) as exc:
        pytest.skip(f"the bundled Fashion-MNIST model is not there yet: {exc}")
    src = export_checkpoint(ckpt, tmp_path / "fm.onnx", ExportOptions()).onnx_path
    out = tmp_path / "fm.int8.onnx"
    result = P.convert_precision(src, out, "int8", calib_data=fashion_mnist_dir(), calib_limit=512,
                                 verify_data=fashion_mnist_dir(), verify_limit=2000)
    figures = result.verification
    assert figures["data"]["samples"] == 2000 and figures["data"]["labelled"]
    assert "test split" in figures["data"]["source"] and "train split" in result.section["calibration"]["source"]
    assert figures["accuracy_drop_points"] <= 1.0, figures
    assert figures["accuracy_reference"] > 0.8  # a trained model, so the comparison means something
    assert result.section["qdq"]["max_abs_zero_point"] == 0


# ------------------------------------------------------------------------------ int8 structure


@pytest.fixture(scope="module")
def small_int8(small_onnx, tmp_path_factory):
    if not _fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed")
    from ulsam_deploy.data.resources import fashion_mnist_dir

    out = tmp_path_factory.mktemp("int8") / "small.int8.onnx"
    warnings = []
    result = P.convert_precision(small_onnx, out, "int8", calib_data=fashion_mnist_dir(), calib_limit=64,
                                 verify_data=fashion_mnist_dir(), verify_limit=200,
                                 options=P.PrecisionOptions(max_drop=100), warn=warnings.append)
    return result, onnx.load(out), warnings


def test_int8_is_symmetric_per_channel_with_float_bias(small_int8):
    result, model, warnings = small_int8
    assert any("64 images" in w and "300" in w for w in warnings)  # fewer than 300 calibration images
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    zps = [numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    kept = set(result.section["kept_fp32"]["ulsam_nodes"])
    quantized_convs = 0
    for node in model.graph.node:
        if node.op_type != "Conv" or node.name in kept:
            continue
        quantized_convs += 1
        act, weight = producers[node.input[0]], producers[node.input[1]]
        assert act.op_type == "DequantizeLinear" and weight.op_type == "DequantizeLinear"
        q = producers[weight.input[0]]  # float weight -> Q -> DQ, per output channel
        w = inits[q.input[0]]
        assert w.data_type == TensorProto.FLOAT and list(inits[q.input[1]].dims) == [w.dims[0]]
        assert len(node.input) < 3 or node.input[2] in inits and inits[node.input[2]].data_type == TensorProto.FLOAT
        # a conv's output reaches its Clip/Relu unquantized (TensorRT fuses conv + bias + activation)
        for consumer in (n for n in model.graph.node if node.output[0] in n.input):
            if consumer.op_type in ("Clip", "Relu"):
                assert producers[consumer.input[0]] is node
    assert quantized_convs > 20
    assert result.section["qdq"]["per_channel_quantizers"] >= quantized_convs


def test_int8_keeps_ulsam_out_of_int8(small_int8):
    result, model, _ = small_int8
    kept = set(result.section["kept_fp32"]["ulsam_nodes"])
    assert result.section["kept_fp32"]["ulsam_blocks"] == 2  # the 13 block and the 1x1 17:1 block
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for node in model.graph.node:
        if node.name not in kept:
            continue
        assert node.op_type not in ("QuantizeLinear", "DequantizeLinear")
        for out in node.output:  # nothing inside a ULSAM block is quantized
            for c in consumers.get(out, []):
                if c.name in kept:
                    assert c.op_type != "QuantizeLinear"
        if node.op_type == "Softmax":
            assert producers[node.input[0]].op_type != "DequantizeLinear"


def test_int8_verification_runs_qdq_as_written(small_int8):
    result, _, _ = small_int8
    figures = result.verification
    assert "graph optimizations off" in figures["candidate"]
    assert "onnxruntime_int8_kernels" in figures and "top1_agreement" in figures["onnxruntime_int8_kernels"]
    assert result.section["calibration"]["samples"] == 64 and not result.section["calibration"]["enough"]


def test_int8_then_fuse(small_onnx, tmp_path):
    pytest.importorskip("onnxruntime_extensions")
    if not _fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed")
    from ulsam_deploy.data.resources import fashion_mnist_dir

    out = tmp_path / "fused.int8.onnx"
    result = P.convert_precision(small_onnx, out, "int8", calib_data=fashion_mnist_dir(), calib_limit=32,
                                 verify_data=fashion_mnist_dir(), verify_limit=64,
                                 options=P.PrecisionOptions(fuse=True, max_drop=100))
    ops = result.sidecar["ops"]
    assert ops.get("SubspaceAttention", 0) >= 1 and ops["QuantizeLinear"] > 20
    assert result.section["fused_after_quantization"] and result.sidecar["fused"]["fused"] >= 1
    assert result.section["calibration"]["graph"] == "unfused"


# ------------------------------------------------------------------------------ ULSAM finding


@pytest.mark.parametrize("arch,width,ulsam,size,blocks", [
    ("mv1", 0.25, "8:1,9:1,11", 64, 3),
    ("mv2", 0.35, "14,17", 64, 2),
    ("mv2", 0.5, "13,17:1", 32, 2),  # 17:1 at 1x1: onnxsim folds its softmax away
])
def test_find_ulsam_regions(arch, width, ulsam, size, blocks):
    from ulsam_deploy.steps.export import ExportOptions, to_export_form, torch_to_onnx
    from ulsam_deploy.passes.simplify import simplify_model
    from ulsam_deploy.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, width, ulsam, 4, 10, size).eval()
    proto = P.name_nodes(simplify_model(torch_to_onnx(to_export_form(model), size, 3, ExportOptions())))
    regions = P.find_ulsam_regions(proto)
    assert len(regions) == blocks
    for region in regions:
        ops = [n.op_type for n in proto.graph.node if n.name in set(region.nodes)]
        assert ops.count("Conv") == 2 and "MaxPool" in ops and "Mul" in ops
    vanilla = P.name_nodes(simplify_model(torch_to_onnx(to_export_form(build_model(arch, width, "", 4, 10, size).eval()),
                                                        size, 3, ExportOptions())))
    assert P.find_ulsam_regions(vanilla) == []


# ------------------------------------------------------------------------------------ the gate


def test_failed_gate_writes_nothing(small_onnx, tmp_path, monkeypatch):
    images = EvalSet(np.zeros((4, 1, 32, 32), np.float32), np.arange(4), "zeros")
    monkeypatch.setattr(P, "verify_against_fp32", lambda *a, **k: {"top1_agreement": 0.9, "data": images.to_dict()})
    out = tmp_path / "x.onnx"
    with pytest.raises(ParityError, match="90.0% of 4 images, below the required 99.5%; nothing was written"):
        P.convert_fp16(small_onnx, out, images)
    assert not out.exists() and not Path(str(out) + ".json").exists()

    monkeypatch.setattr(P, "verify_against_fp32", lambda *a, **k: {
        "top1_agreement": 0.9, "accuracy_reference": 0.9, "accuracy_candidate": 0.85, "accuracy_drop_points": 5.0})
    with pytest.raises(ParityError, match=r"5.00 points lost, more than --max-drop 1\b"):
        P.quantize_int8(small_onnx, out, images, images)
    assert not out.exists() and not Path(str(out) + ".json").exists()

    unlabelled = EvalSet(images.images, None, "zeros")
    monkeypatch.setattr(P, "verify_against_fp32", lambda *a, **k: {"top1_agreement": 0.98})
    with pytest.raises(ParityError, match="98.0% of 4 unlabelled images, below 99.0%"):
        P.quantize_int8(small_onnx, out, unlabelled, unlabelled)
    assert not out.exists()


# ------------------------------------------------------------------------------------- errors


def test_error_paths(small_onnx, tmp_path, grey_images):
    verify = load_eval_set(grey_images, preprocess_from_sidecar(json.loads(Path(str(small_onnx) + ".json").read_text())))
    existing = tmp_path / "exists.onnx"
    existing.write_bytes(b"keep")
    with pytest.raises(UserError, match="already exists; pass --force"):
        P.convert_fp16(small_onnx, existing, verify)
    assert existing.read_bytes() == b"keep"
    with pytest.raises(UserError, match="is the input"):
        P.convert_precision(small_onnx, small_onnx, "fp16", verify_data=verify)
    with pytest.raises(UserError, match="does not exist"):
        P.convert_precision(tmp_path / "nope.onnx", None, "fp16")
    with pytest.raises(UserError, match="fp16 or int8"):
        P.convert_precision(small_onnx, tmp_path / "a.onnx", "int4")
    with pytest.raises(UserError, match="needs real calibration images: pass --calib-data"):
        P.convert_precision(small_onnx, tmp_path / "a.onnx", "int8", verify_data=verify)
    with pytest.raises(UserError, match="--calib-data is for --precision int8"):
        P.convert_precision(small_onnx, tmp_path / "a.onnx", "fp16", calib_data=grey_images)
    with pytest.raises(UserError, match="--io fp16 applies to --precision fp16"):
        P.convert_precision(small_onnx, tmp_path / "a.onnx", "int8", calib_data=grey_images,
                            options=P.PrecisionOptions(io="fp16"))
    with pytest.raises(UserError, match="--calib-method"):
        P.PrecisionOptions(calib_method="kl")
    with pytest.raises(UserError, match="does not exist"):
        P.convert_precision(small_onnx, tmp_path / "a.onnx", "int8", calib_data=tmp_path / "missing", verify_data=verify)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no images"):
        P.convert_precision(small_onnx, tmp_path / "a.onnx", "int8", calib_data=empty, verify_data=verify)
    # no sidecar
    bare = tmp_path / "bare.onnx"
    shutil.copy(small_onnx, bare)
    with pytest.raises(UserError, match="bare.onnx.json.*missing"):
        P.convert_precision(bare, tmp_path / "a.onnx", "fp16", verify_data=verify)
    # no default verification images for a 3-class model
    odd = tmp_path / "odd.onnx"
    shutil.copy(small_onnx, odd)
    sidecar = json.loads(Path(str(small_onnx) + ".json").read_text())
    sidecar["config"]["num_classes"] = 3
    Path(str(odd) + ".json").write_text(json.dumps(sidecar))
    with pytest.raises(UserError, match="pass --verify-data"):
        P.convert_precision(odd, tmp_path / "a.onnx", "fp16")
    assert not (tmp_path / "a.onnx").exists()


def test_already_converted_or_fused_inputs_are_refused(small_onnx, tmp_path, grey_images, small_int8):
    result, _, _ = small_int8
    verify = load_eval_set(grey_images, preprocess_from_sidecar(result.sidecar))
    with pytest.raises(UserError, match="already int8; convert the fp32 ONNX"):
        P.convert_fp16(result.onnx_path, tmp_path / "b.onnx", verify)
    pytest.importorskip("onnxruntime_extensions")
    from ulsam_deploy.passes.fuse import fuse_model

    fused, _ = fuse_model(onnx.load(small_onnx))
    path = tmp_path / "fused.onnx"
    onnx.save(fused, path)
    shutil.copy(str(small_onnx) + ".json", str(path) + ".json")
    with pytest.raises(UserError, match="already fused; int8 calibrates the unfused graph"):
        P.quantize_int8(path, tmp_path / "c.onnx", verify, verify)
    # fp16 of a fused graph keeps SubspaceAttention fp32 and verifies through the ORT custom op
    out = tmp_path / "fused.fp16.onnx"
    res = P.convert_fp16(path, out, verify, P.PrecisionOptions(min_agreement=0.9))
    assert res.sidecar["ops"]["SubspaceAttention"] >= 1 and "SubspaceAttention" in res.section["kept_fp32"]["op_types"]


# --------------------------------------------------------------------------------- eval sets


def test_eval_sets_from_directories(grey_images, tmp_path):
    from ulsam_deploy.data.images import Preprocess

    pre = Preprocess(32, 1, 1.0, (0.286,), (0.353,))
    labelled = load_eval_set(grey_images, pre, class_names=["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"])
    assert len(labelled) == 60 and labelled.labelled and labelled.images.shape == (60, 1, 32, 32)
    from ulsam_deploy.data.fashion_mnist import load_arrays

    _, labels = load_arrays("test", 60)
    assert sorted(labelled.labels.tolist()) == sorted(labels.tolist())  # folder names mapped to class indices
    unnamed = load_eval_set(grey_images, pre)  # class folders not named like the model's classes
    assert not unnamed.labelled
    flat = tmp_path / "flat"
    flat.mkdir()
    for png in list(grey_images.rglob("*.png"))[:7]:
        shutil.copy(png, flat / f"{png.parent.name}_{png.name}")
    assert len(load_eval_set(flat, pre)) == 7 and not load_eval_set(flat, pre).labelled
    assert len(load_eval_set(grey_images, pre, limit=10)) == 10


@needs_fmnist
def test_idx_directory_splits():
    from ulsam_deploy.data.images import Preprocess
    from ulsam_deploy.data.resources import fashion_mnist_dir

    pre = Preprocess(28, 1, 1.0, (0.286,), (0.353,))
    train = load_eval_set(fashion_mnist_dir(), pre, split="train", limit=50)
    test = load_eval_set(fashion_mnist_dir(), pre, split="test", limit=50)
    assert "train split" in train.source and "test split" in test.source
    assert train.labelled and not np.array_equal(train.images, test.images)


# ----------------------------------------------------------------------------------------- CLI


def _one_error_line(output: str) -> str:
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


def test_cli_convert_fp16_and_errors(cli_runner, small_onnx, grey_images, tmp_path, monkeypatch):
    from ulsam_deploy.cli import app

    out = tmp_path / "cli.fp16.onnx"
    result = cli_runner.invoke(app, ["convert", str(small_onnx), "--precision", "fp16", "-o", str(out),
                                     "--verify-data", str(grey_images), "--min-agreement", "0.9"])
    assert result.exit_code == 0, result.output
    assert out.exists() and Path(str(out) + ".json").exists() and "top-1 agree" in result.output

    result = cli_runner.invoke(app, ["convert", str(tmp_path / "nope.onnx"), "--precision", "fp16"])
    assert result.exit_code == 2 and "does not exist" in _one_error_line(result.output)
    target = tmp_path / "x.int8.onnx"
    result = cli_runner.invoke(app, ["convert", str(small_onnx), "--precision", "int8", "-o", str(target),
                                     "--verify-data", str(grey_images)])
    assert result.exit_code == 2 and "--calib-data" in _one_error_line(result.output) and not target.exists()
    result = cli_runner.invoke(app, ["convert", str(small_onnx), "--precision", "bf16", "-o", str(target)])
    assert result.exit_code == 2 and "fp16 or int8" in _one_error_line(result.output)

    monkeypatch.setattr(P, "verify_against_fp32", lambda *a, **k: {"top1_agreement": 0.5})
    result = cli_runner.invoke(app, ["convert", str(small_onnx), "--precision", "fp16", "-o", str(target),
                                     "--verify-data", str(grey_images)])
    assert result.exit_code == 3 and "nothing was written" in _one_error_line(result.output)
    assert not target.exists() and not Path(str(target) + ".json").exists()


def test_same_folder_for_calibration_and_verification_warns(small_onnx, grey_images, tmp_path):
    warnings = []
    P.convert_precision(small_onnx, tmp_path / "w.onnx", "int8", calib_data=grey_images, verify_data=grey_images,
                        options=P.PrecisionOptions(max_drop=100), warn=warnings.append)
    assert any("same folder" in w for w in warnings) and any("60 images" in w for w in warnings)
