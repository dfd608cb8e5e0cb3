"""int8 pass: explicit Q/DQ made for the runtime that will run it.

* ``target="tensorrt"`` (the Jetson path): ONNX Runtime's static quantizer in QDQ format with the settings
  TensorRT's explicit quantization wants: int8, symmetric (zero point 0) activations and weights,
  per-channel weights, float biases (TensorRT has no int32 bias DequantizeLinear), Q/DQ on the inputs of
  Conv/Gemm/MatMul and residual Add (outputs of Conv/Gemm left unquantized, so TensorRT fuses
  Conv+bias+activation). Its meaning is the Q/DQ graph as written, which ONNX Runtime reproduces exactly
  with its graph optimizations off.
* ``target="ort"``: ONNX Runtime's own recipe for its CPU kernels: ``quant_pre_process``, then U8S8 QDQ,
  per-channel weights, ``reduce_range`` where the CPU has no VNNI / dot product
  (:mod:`ulsam_deploy.backends.onnxrt.cpu`), Q/DQ around every op ORT has an int8 kernel for, so a default
  session fuses Conv (depthwise too) with its Clip/ReLU6, the residual Adds and the pooling into
  QLinearConv / QLinearAdd / QLinearGlobalAveragePool.

Both calibrate on real images on the UNFUSED graph, with every ULSAM block (softmax/attention) kept out
of int8 (found by :mod:`ulsam_deploy.passes.ulsam_pattern`). The model records its target in its
metadata (``ulsam_deploy.int8_target``), so every runner executes it as it is meant to run.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ulsam_deploy.passes import CALIB_METHODS, INT8_TARGETS as TARGETS

from ulsam_deploy.errors import UserError
from ulsam_deploy.onnx_graph import (INT8_TARGET_KEY, eliminate_dead_code, fit_ir_version, graph_inputs, name_nodes,
                                     producers_and_consumers, set_metadata, unshare_initializers)

TRT_OP_TYPES = ("Conv", "Gemm", "MatMul", "Add")
TRT_NO_OUTPUT_QUANT = ("Conv", "Gemm", "MatMul")


class CalibrationReader:
    """onnxruntime.quantization CalibrationDataReader over normalized images, in equal batches.

    Length and ``set_range`` count batches: with ``CalibStridedMinMax`` ORT calibrates a few batches at a
    time (its histogram calibrators otherwise keep every activation of every image in memory). Batches are
    equal in size (a static batch axis needs it, and ORT's histogram calibrators fail on a short last
    batch): the last one is topped up from the start of the set.
    """

    def __init__(self, input_name: str, images: np.ndarray, batch: int, static: int | None):
        self.input_name, self.images = input_name, images
        self.step = static or min(batch, len(images))
        self.count = -(-len(images) // self.step)
        self.start, self.end, self.position = 0, self.count, 0

    def __len__(self) -> int:
        return self.count

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.position = start_index, min(end_index, self.count), start_index

    def get_next(self):
        if self.position >= self.end:
            return None
        offset = self.position * self.step
        self.position += 1
        chunk = self.images[offset:offset + self.step]
        if len(chunk) < self.step:
            reps = -(-self.step // len(self.images))
            chunk = np.concatenate([chunk] + [self.images] * reps)[:self.step]
        return {self.input_name: np.ascontiguousarray(chunk, dtype=np.float32)}

    def rewind(self) -> None:
        self.position = self.start

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def _stride(batches: int, most: int = 4) -> int:
    """Largest divisor of ``batches`` not above ``most`` (ORT needs the stride to divide the batch count)."""
    return max(d for d in range(1, min(most, batches) + 1) if batches % d == 0)


def _static_batch(model: onnx.ModelProto) -> int | None:
    dim = graph_inputs(model)[0].type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def tensorrt_settings(calib_method: str = "percentile") -> dict:
    """The exact quantize_static arguments (besides model, reader and exclusions) for TensorRT."""
    from onnxruntime.quantization import QuantFormat, QuantType

    return {
        "quant_format": QuantFormat.QDQ, "per_channel": True, "reduce_range": False,
        "activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8,
        "op_types_to_quantize": list(TRT_OP_TYPES), "calibrate_method": _method(calib_method),
        "extra_options": {
            "ActivationSymmetric": True,  # zero point 0: TensorRT supports symmetric int8 only
            "WeightSymmetric": True,
            "QuantizeBias": False,  # TensorRT has no int32 bias DequantizeLinear; biases stay float
            "AddQDQPairToWeight": True,  # float weights behind Q->DQ (TensorRT folds them)
            "OpTypesToExcludeOutputQuantization": list(TRT_NO_OUTPUT_QUANT),  # let TensorRT fuse conv+act
            "QDQKeepRemovableActivations": True,  # never drop Relu/Clip
        },
    }


def ort_settings(calib_method: str, reduce_range: bool) -> dict:
    """quantize_static arguments for ONNX Runtime's CPU int8 kernels (U8S8, per-channel, ORT's op coverage)."""
    from onnxruntime.quantization import QuantFormat, QuantType

    return {
        "quant_format": QuantFormat.QDQ, "per_channel": True, "reduce_range": bool(reduce_range),
        "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8,
        "op_types_to_quantize": None,  # every op ORT quantizes: Conv, Gemm, Add, pooling, Clip/Relu folding
        "calibrate_method": _method(calib_method),
        "extra_options": {"WeightSymmetric": True, "ActivationSymmetric": False},
    }


def pre_process(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's ``quant_pre_process`` (shape inference + basic graph optimization) on a copy."""
    from onnxruntime.quantization import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="ulsam-int8-pre-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(fit_ir_version(copy.deepcopy(model)), src)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            # ONNX's own shape inference is enough for these CNNs; the symbolic one needs sympy, which the
            # torch-free base install (a Jetson board) does not have
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        out = onnx.load(str(dst))
    del out.graph.value_info[:]
    return out


def to_int8(model: onnx.ModelProto, calib_images: np.ndarray, *, target: str = "tensorrt",
            calib_method: str = "percentile", batch: int = 32, keep_ulsam_fp32: bool = True,
            reduce_range: bool = False) -> tuple[onnx.ModelProto, dict]:
    """Quantize an unfused fp32 graph for ``target`` (not verified); returns the model and the facts.

    ``reduce_range`` (``target="ort"``): 7-bit weights, what ONNX Runtime advises on CPUs without VNNI or dot
    product (:func:`ulsam_deploy.backends.onnxrt.cpu.ort_int8_recipe` decides for the CPU at hand).
    """
    from onnxruntime.quantization import quantize_static

    from ulsam_deploy.passes.ulsam_pattern import find_ulsam_blocks

    if target not in TARGETS:
        raise UserError(f"--target must be one of {', '.join(TARGETS)}, not '{target}'.")
    if calib_method not in CALIB_METHODS:
        raise UserError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, not '{calib_method}'.")
    facts: dict = {"target": target}
    model = copy.deepcopy(model)
    if target == "ort":
        model = pre_process(model)
        settings = ort_settings(calib_method, bool(reduce_range))
        facts.update(pre_process="onnxruntime quant_pre_process")
    else:
        if reduce_range:
            raise UserError("--reduce-range applies to --target ort; TensorRT's int8 is symmetric 8-bit.")
        settings = tensorrt_settings(calib_method)
    model = name_nodes(model)
    facts["initializers_unshared"] = unshare_initializers(model)
    blocks = find_ulsam_blocks(model).blocks if keep_ulsam_fp32 else []
    exclude = [name for b in blocks for name in b.nodes]
    reader = CalibrationReader(graph_inputs(model)[0].name, calib_images, batch, _static_batch(model))
    settings["extra_options"]["CalibStridedMinMax"] = _stride(len(reader))  # a few batches per pass: bounded memory
    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static logs through the root logger
    try:
        with tempfile.TemporaryDirectory(prefix="ulsam-int8-") as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            onnx.save(fit_ir_version(model), src)
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
                    quantize_static(str(src), str(dst), reader, nodes_to_exclude=exclude, **settings)
            except ValueError as exc:
                if "bins" not in str(exc) or calib_method == "minmax":
                    raise
                # a tensor whose range is (near) zero, e.g. a near-uniform attention map or a constant channel,
                # has no histogram of 2048 finite bins: the whole model is calibrated by min/max instead, and said
                facts["calibration_fallback"] = (
                    f"{calib_method} calibration needs a histogram of every tensor, and one has a (near-)zero range; "
                    "calibrated with minmax instead")
                settings["calibrate_method"] = _method("minmax")
                reader.set_range(0, len(reader))
                with contextlib.redirect_stdout(io.StringIO()):
                    quantize_static(str(src), str(dst), reader, nodes_to_exclude=exclude, **settings)
            quantized = onnx.load(str(dst))
    finally:
        root.setLevel(level)
    if target == "tensorrt":
        facts["residual_qdq_removed"] = place_for_tensorrt(quantized)
        facts["tensorrt_fusions"] = tensorrt_fusions(quantized)
    set_metadata(quantized, INT8_TARGET_KEY, target)
    facts.update(excluded_ulsam_blocks=len(blocks), excluded_nodes=exclude, qdq=qdq_summary(quantized),
                 settings={k: (v if isinstance(v, (bool, int, float, str, list, dict, type(None))) else str(v))
                           for k, v in settings.items()})
    if target == "tensorrt" and facts["qdq"]["max_abs_zero_point"] != 0:
        raise UserError("The quantizer produced non-zero zero points, which TensorRT rejects; this is a bug, please "
                        "report it.")
    return quantized, facts


WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# ops TensorRT quantizes, or moves Q/DQ across, so a DQ feeding them is absorbed into an int8 kernel
QDQ_ABSORBING_OPS = WEIGHTED_OPS + ("Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Reshape",
                                    "Flatten", "Transpose", "Squeeze", "Unsqueeze")


def _qdq_input(name: str, producer: dict):
    """(Q, DQ, source tensor) when ``name`` is ``DequantizeLinear(QuantizeLinear(source))``, else None."""
    dq = producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = producer.get(dq.input[0])
    return (q, dq, q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None


def place_for_tensorrt(model: onnx.ModelProto) -> int:
    """Quantize only the skip input of each residual Add, in place; returns how many Q/DQ pairs were removed.

    ONNX Runtime's quantizer puts Q/DQ on both inputs of an Add. TensorRT's developer guide (Q/DQ placement
    recommendations) says a Q/DQ pair on the Conv side of an element-wise Add "forces the separation of the
    convolution operator from the element-wise addition operator"; with only the other (skip) input quantized,
    TensorRT fuses Conv + Add (+ activation) into one int8 kernel. The Conv-side input is the one whose tensor is
    made by a Conv and read by nothing but this pair (the skip tensor is also read by the next block's Conv)."""
    producer, consumers = producers_and_consumers(model.graph)
    drop: set[int] = set()
    for add in model.graph.node:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        sides = [_qdq_input(name, producer) for name in add.input]
        if not all(sides):
            continue
        conv_side = [i for i, (q, dq, src) in enumerate(sides)
                     if getattr(producer.get(src), "op_type", None) in WEIGHTED_OPS
                     and len(consumers.get(src, [])) == 1 and len(consumers.get(q.output[0], [])) == 1
                     and len(consumers.get(dq.output[0], [])) == 1]
        if len(conv_side) == 2:  # both are a Conv's output read by this pair alone: nothing tells the skip apart,
            conv_side = conv_side[1:]  # so the first input keeps its Q/DQ and the second loses it
        if len(conv_side) != 1:
            continue
        q, dq, src = sides[conv_side[0]]
        add.input[conv_side[0]] = src
        drop.update((id(q), id(dq)))
    if drop:
        keep = [n for n in model.graph.node if id(n) not in drop]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        eliminate_dead_code(model)  # the removed pairs' scales and zero points
    return len(drop) // 2


def tensorrt_fusions(model: onnx.ModelProto) -> dict:
    """What TensorRT's int8 fusions will make of a Q/DQ graph, predicted from its structure (TensorRT's documented
    rules): residual Adds it fuses with the Conv before them (exactly one input behind Q/DQ, the other straight from
    a Conv), weighted ops with int8 data and weights, and the Q/DQ pairs no int8 kernel absorbs (named). A fused
    SubspaceAttention plugin computes in float: a DQ before it and a Q after it are its boundary, not a loss."""
    from ulsam_deploy import op_spec

    producer, consumers = producers_and_consumers(model.graph)
    adds = fusable = 0
    not_fusable = []
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        sides = [_qdq_input(name, producer) for name in node.input]
        if not any(sides):
            continue  # a float Add (inside a block kept fp32)
        adds += 1
        plain = [name for name, side in zip(node.input, sides) if side is None]
        if sum(1 for s in sides if s) == 1 and getattr(producer.get(plain[0]), "op_type", None) in WEIGHTED_OPS:
            fusable += 1
        else:
            not_fusable.append(node.name or node.output[0])
    weighted = [n for n in model.graph.node if n.op_type in WEIGHTED_OPS]
    int8_weighted = [n for n in weighted if _qdq_input(n.input[0], producer) and _qdq_input(n.input[1], producer)]
    unabsorbed = []
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or _qdq_input(node.output[0], producer) is None:
            continue
        readers = consumers.get(node.output[0], [])  # a fused plugin reads float: DQ before it is its boundary
        if not readers or any(r.op_type not in QDQ_ABSORBING_OPS + (op_spec.OP_TYPE,) for r in readers):
            unabsorbed.append(node.name or node.output[0])
    plugins = [n for n in model.graph.node if n.op_type == op_spec.OP_TYPE]
    plugin_int8 = [n.name for n in plugins if _qdq_input(n.input[0], producer) is None
                   and any(r.op_type == "QuantizeLinear" for r in consumers.get(n.output[0], []))]
    summary = (f"{fusable} of {adds} residual Adds fusable, {len(int8_weighted)} of {len(weighted)} "
               f"Conv/Gemm with int8 input and weights, Q/DQ pairs that TensorRT cannot fuse: "
               + (", ".join(unabsorbed[:5]) + (" ..." if len(unabsorbed) > 5 else "") if unabsorbed else "none"))
    return {"residual_adds": adds, "residual_adds_fusable": fusable, "residual_adds_not_fusable": not_fusable,
            "weighted_ops": len(weighted), "weighted_ops_int8": len(int8_weighted),
            "weighted_ops_float": [n.name for n in weighted if n not in int8_weighted],
            "qdq_not_absorbed": unabsorbed, "plugins": len(plugins),
            "summary": summary, "plugins_before_q": plugin_int8}


def qdq_summary(model: onnx.ModelProto) -> dict:
    """Zero points, per-channel weight count and int8 types, read back from the Q/DQ graph."""
    inits = {t.name: t for t in model.graph.initializer}
    zero_points, per_channel, types = [], 0, set()
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3:
            continue
        zp = inits.get(node.input[2])
        scale = inits.get(node.input[1])
        if zp is not None:
            arr = numpy_helper.to_array(zp)
            zero_points.append(int(np.abs(arr.astype(np.int64)).max()) if arr.size else 0)
            types.add(onnx.helper.tensor_dtype_to_np_dtype(zp.data_type).name)
        if scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1:
            per_channel += 1
    return {"quantize_nodes": len(zero_points), "max_abs_zero_point": max(zero_points, default=0),
            "per_channel_quantizers": per_channel, "zero_point_types": sorted(types),
            "dequantize_nodes": sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear")}


__all__ = ["CALIB_METHODS", "CalibrationReader", "TARGETS", "ort_settings", "place_for_tensorrt", "pre_process",
           "qdq_summary", "tensorrt_fusions", "tensorrt_settings", "to_int8"]
