"""Helpers shared by the tests (import as ``from helpers import ...``; pytest puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import onnx
from onnx import TensorProto, helper, numpy_helper

from ulsam_deploy.artifacts import sha256_file
from ulsam_deploy.sidecars import DynamicRange, ModelInfo, OnnxSidecar, PreprocessSpec, TensorSpec, sidecar_path
from ulsam_deploy.models.config import PAPER_CONFIGS as _PAPER_CONFIGS, ModelConfig

PAPER_CONFIGS = list(_PAPER_CONFIGS)


def _have_fashion_mnist() -> bool:
    from ulsam_deploy.data import MissingResource
    from ulsam_deploy.data.resources import fashion_mnist_dir

    try:
        fashion_mnist_dir()
        return True
    except MissingResource:
        return False


HAVE_FMNIST = _have_fashion_mnist()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def bundled_macs_from_torch(name: str = "fashion-mnist") -> int:
    """MACs of a bundled model counted on the PyTorch module (forward hooks, the paper's rule): a second counter,
    independent of the ONNX-graph count that torch-free commands report and of any file the code wrote."""
    from ulsam_deploy import bundled
    from ulsam_deploy.models import profile_model

    model, _ = bundled.load(name)
    return int(profile_model(model).macs)


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial affine weights and statistics so folding mistakes cannot hide.

    A model with a ``config`` then gets the statistics of a few seeded random batches (calibrate_batchnorm): with
    made-up statistics alone its logits are the same for every input, and the gates refuse to call such parity
    proven."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
                if n == 1:  # ULSAM's bn_point: keep most logits above relu_point's zero so maps vary
                    m.weight.fill_(2.0)
                    m.bias.fill_(1.0)
            elif isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.02, generator=gen)
    config = getattr(model, "config", None)
    if config is not None:
        from ulsam_deploy.models import calibrate_batchnorm

        size = config.input_size
        calibrate_batchnorm(model, [torch.randn(8, config.in_channels, size, size, generator=gen) for _ in range(3)])
    return model


def attention_spread(module: torch.nn.Module, x: torch.Tensor) -> float:
    """Largest spread (max - min) of the attention maps an eval ULSAM applies to ``x``.

    ``y = x * (1 + A)``, so ``A = y / x - 1`` where ``x`` is not tiny. A uniform map (spread 0)
    would hide wrong constants, so tests assert a spread well above zero.
    """
    with torch.no_grad():
        y = module(x)
    mask = x.abs() > 1e-3
    a = torch.where(mask, y / torch.where(mask, x, torch.ones_like(x)) - 1, torch.nan)
    spread = a.flatten(2).nan_to_num(nan=0.0).amax(2) - a.flatten(2).nan_to_num(nan=1e9).amin(2)
    return float(spread.max())


TORCH_NOISE = ("Weights only load failed", "PytorchStreamReader", "weights_only` argument", "WeightsUnpickler")


def one_error_line(output: str) -> str:
    """The one ``error:`` line of a command's output (no traceback, no second error)."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and output.count("error:") == 1, output
    return errors[0]


def clean_error(result, code: int, *needles: str) -> str:
    """The command failed with ``code`` and one sentence containing ``needles``: no traceback, no 'Unexpected'."""
    out = result.output
    assert result.exit_code == code, out
    assert "Unexpected" not in out, out
    line = one_error_line(out)
    for needle in needles:
        assert needle in out, out
    assert not any(noise in out for noise in TORCH_NOISE), out
    return line


# a grey 32x32 MV2 x0.35 + ULSAM 17:1 configuration (what tiny ONNX sidecars describe)
GREY = ModelConfig(arch="mv2", width=0.35, ulsam="17:1", groups=4, num_classes=10, input_size=32, in_channels=1)


def tiny_onnx(path: Path, *, channels=1, size=32, classes=10, nan=False, two_inputs=False, feature_map=False,
              sidecar=True, config: dict | None = None, checkpoint=None, checkpoint_sha256=None) -> Path:
    """A small classifier ONNX (dynamic batch) and, unless ``sidecar=False``, its valid sidecar."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, channels, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((classes, 4)).astype(np.float32), "g")]
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"])]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, size, size])]
    if two_inputs:
        inputs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["batch", 4, size // 2, size // 2]))
        nodes.append(helper.make_node("Add", ["r", "extra"], ["r2"]))
    last = "r2" if two_inputs else "r"
    if feature_map:
        out_shape = ["batch", 4, size // 2, size // 2]
        nodes.append(helper.make_node("Identity", [last], ["logits"]))
    else:
        out_shape = ["batch", classes]
        nodes += [helper.make_node("GlobalAveragePool", [last], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
                  helper.make_node("Gemm", ["f", "g"], ["l0" if nan else "logits"], transB=1)]
        if nan:
            inits.append(numpy_helper.from_array(np.array([np.nan], np.float32), "nan"))
            nodes.append(helper.make_node("Mul", ["l0", "nan"], ["logits"]))
    graph = helper.make_graph(nodes, "tiny", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    if sidecar:
        config = config or {**GREY.to_dict(), "num_classes": classes, "input_size": size, "in_channels": channels}
        side = OnnxSidecar(onnx=path.name, sha256=sha256_file(path),
                           model=ModelInfo(config=config, checkpoint=checkpoint, checkpoint_sha256=checkpoint_sha256),
                           preprocess=PreprocessSpec(size=size, in_channels=channels, mean=[0.5] * channels,
                                                     std=[0.5] * channels),
                           inputs=[TensorSpec(name=i.name, shape=[d.dim_param or d.dim_value
                                                                  for d in i.type.tensor_type.shape.dim])
                                   for i in inputs],
                           outputs=[TensorSpec(name="logits", shape=out_shape)], dynamic=DynamicRange())
        sidecar_path(path).write_text(side.to_json())
    return path
