"""Precision as ONNX-to-ONNX passes: fp16 and int8 (explicit Q/DQ), each verified on ONNX Runtime CPU.

TensorRT 11 builds strongly typed networks only (no fp16/int8 builder flags, no calibrators) and
TensorRT 10 supports the same mode, so the precision lives in the ONNX file itself:

- **fp16** (:func:`convert_fp16`): onnxconverter-common's maintained float16 converter
  (``convert_float_to_float16``; onnxruntime ships a copy, ``onnxruntime.transformers.float16``, used
  as fallback, whose duplicate-Cast bug we repair). Weights and activations become
  fp16; Softmax, GlobalAveragePool/ReduceMean and every ULSAM block (the unfused subgraph or the
  fused ``SubspaceAttention`` node) stay fp32 behind Cast nodes; graph I/O stays fp32 unless
  ``io="fp16"``.
- **int8** (:func:`quantize_int8`): ONNX Runtime's static quantizer in QDQ format with the
  settings TensorRT's explicit quantization wants: int8, symmetric (zero point 0) activations and
  weights, per-channel weights, float biases (TensorRT has no int32 bias DequantizeLinear), Q/DQ on
  the inputs of Conv/Gemm/MatMul and residual Add (outputs of Conv/Gemm left unquantized, so
  TensorRT fuses Conv+bias+activation). Calibrated on real images on the UNFUSED graph with every
  ULSAM block (softmax/attention) excluded, then fused when asked. NVIDIA ModelOpt's ONNX
  quantizer would also do, but it pulls onnxruntime-gpu, cupy and an older onnx into the
  environment, so we use ONNX Runtime's.

Each pass runs the fp32 input and its output on ONNX Runtime CPU over real images and refuses to
write (ParityError, nothing written) when the output misses its gate: fp16 top-1 agreement with
fp32 >= 99.5 %; int8 top-1 accuracy within 1 point of fp32 (labelled data), or top-1 agreement
>= 99 % on unlabelled data (which bounds the accuracy change by the same 1 point). The figures go
into the output's sidecar (``<out>.json``: a copy of the input's sidecar plus a ``precision``
section).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ulsam_deploy.backends.judge import compare_outputs
from ulsam_deploy.errors import ParityError, UserError
from ulsam_deploy.passes.common import check_model, fit_ir_version, load_onnx, op_counts, save_onnx_atomic, sha256_file
from ulsam_deploy.data.evalset import EvalSet, default_verify_set, load_eval_set, preprocess_from_sidecar

Stage = Callable[[str], ContextManager]
Warn = Callable[[str], None]

PRECISIONS = ("fp16", "int8")
FP16_BLOCKED_OPS = ("Softmax", "GlobalAveragePool", "ReduceMean", "SubspaceAttention")
INT8_OP_TYPES = ("Conv", "Gemm", "MatMul", "Add")
INT8_NO_OUTPUT_QUANT = ("Conv", "Gemm", "MatMul")
CALIB_METHODS = ("minmax", "entropy", "percentile")
MIN_CALIB_IMAGES = 300


@contextlib.contextmanager
def _quiet_stage(_name: str):
    yield


def _no_warn(_message: str) -> None:
    pass


# ----------------------------------------------------------------------------------- options


@dataclass
class PrecisionOptions:
    io: str = "fp32"  # fp16 pass: graph inputs/outputs stay fp32 unless "fp16"
    fuse: bool = False  # fuse ULSAM blocks into SubspaceAttention (after quantizing, for int8)
    force: bool = False
    min_agreement: float = 0.995  # fp16 gate: top-1 agreement with fp32
    max_drop: float = 1.0  # int8 gate: top-1 accuracy points lost against fp32
    calib_method: str = "percentile"
    batch: int = 32  # images per ONNX Runtime call (calibration and verification)
    keep_ulsam_fp32: bool = True  # keep ULSAM blocks out of fp16/int8

    def __post_init__(self) -> None:
        if self.io not in ("fp32", "fp16"):
            raise UserError(f"--io must be fp32 or fp16, not '{self.io}'.")
        if self.calib_method not in CALIB_METHODS:
            raise UserError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, not '{self.calib_method}'.")
        if not 0 < self.min_agreement <= 1:
            raise UserError(f"--min-agreement must be in (0, 1], not {self.min_agreement}.")
        if not 0 <= self.max_drop <= 100:
            raise UserError(f"--max-drop must be between 0 and 100 accuracy points, not {self.max_drop}.")
        if int(self.batch) < 1:
            raise UserError(f"The batch size must be positive, not {self.batch}.")


@dataclass
class PrecisionResult:
    onnx_path: Path
    sidecar_path: Path
    precision: str
    verification: dict
    section: dict  # the sidecar's "precision" section
    sidecar: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


# ------------------------------------------------------------------------ graph inspection


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name:
                out.setdefault(name, []).append(node)
    return out


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {name: node for node in model.graph.node for name in node.output if name}


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _is_depthwise_1x1(node: onnx.NodeProto, inits: dict[str, TensorProto]) -> bool:
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return False
    dims = list(inits[node.input[1]].dims)
    return len(dims) == 4 and dims[1] == 1 and dims[2:] == [1, 1] and int(_attr(node, "group", 1)) == dims[0]


@dataclass
class UlsamRegion:
    """One ULSAM block of an unfused graph: the nodes between its input tensor and its output tensor."""

    input: str
    output: str
    nodes: list[str]
    softmax: str | None  # None where onnxsim folded a softmax over a single position into a constant


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a unique name (block and exclude lists work by name)."""
    seen = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)
    return model


_PASS_THROUGH = ("Reshape", "Flatten", "Unsqueeze", "Squeeze", "Identity")


def find_ulsam_regions(model: onnx.ModelProto) -> list[UlsamRegion]:
    """Locate unfused ULSAM blocks structurally (node names are not trusted).

    Anchor: a depthwise 1x1 Conv (the block's first op) whose input ``x`` also reaches, through at
    most three reshapes, a Mul (``x * (1 + A)``, or ``A * x`` then ``+ x`` in the per-subspace
    form). The region is every node between ``x`` and that Mul's output (extended through trailing
    Reshape/Add), provided it reaches no other graph input and holds the Softmax (or the constant
    onnxsim leaves where the softmax runs over a single position, plus the then-dead attention
    branch). Nodes need names (:func:`name_nodes`).
    """
    producers, consumers = _producers(model), _consumers(model)
    inits = {t.name: t for t in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input} - set(inits)
    graph_outputs = {o.name for o in model.graph.output}
    regions, seen_x = [], set()
    for dw in (n for n in model.graph.node if _is_depthwise_1x1(n, inits)):
        x = dw.input[0]
        if x in seen_x:
            continue
        # the Mul that scales x
        mul, frontier = None, [(c, 0) for c in consumers.get(x, []) if c is not dw]
        while frontier and mul is None:
            node, depth = frontier.pop(0)
            if node.op_type == "Mul":
                mul = node
            elif node.op_type in _PASS_THROUGH and depth < 3:
                frontier += [(c, depth + 1) for c in consumers.get(node.output[0], [])]
        if mul is None:
            continue
        output = mul.output[0]
        while output not in graph_outputs:  # trailing Reshape / "+ x" Add
            nexts = consumers.get(output, [])
            if len(nexts) != 1 or nexts[0].op_type not in ("Reshape", "Add"):
                break
            others = [i for i in nexts[0].input if i and i != output]
            if not all(i in inits or i == x for i in others):
                break
            output = nexts[0].output[0]
        # every node between x and output
        region: dict[str, onnx.NodeProto] = {}
        stack, ok = [output], True
        while stack:
            t = stack.pop()
            if t == x or t in inits or not t:
                continue
            if t in graph_inputs or t not in producers:
                ok = False
                break
            node = producers[t]
            if node.name not in region:
                region[node.name] = node
                stack.extend(node.input)
        if not ok or len(region) > 64:
            continue
        # the attention branch from dw, whole (it is dead code where the softmax was folded away)
        branch, queue = {}, [dw]
        while queue and len(branch) <= 16:
            node = queue.pop()
            if node.name in branch or node.name in region:
                continue
            branch[node.name] = node
            for out in node.output:
                if out in graph_outputs:
                    branch = {"": None}  # escapes: not a ULSAM branch
                    queue = []
                    break
                queue += consumers.get(out, [])
        if "" in branch or len(branch) > 16:
            continue
        region.update(branch)
        ops = {n.op_type for n in region.values()}
        if "Softmax" not in ops and "ConstantOfShape" not in ops:
            continue
        softmax = next((n.name for n in region.values() if n.op_type == "Softmax"), None)
        order = [n.name for n in model.graph.node if n.name in region]
        regions.append(UlsamRegion(x, output, order, softmax))
        seen_x.add(x)
    return regions


def toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder nodes topologically in place (the float16 converter appends its input Casts at the end)."""
    available = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    pending, ordered = list(model.graph.node), []
    while pending:
        progress, rest = False, []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
                progress = True
            else:
                rest.append(node)
        if not progress:  # a cycle or a dangling input: leave the order to onnx.checker to report
            ordered.extend(rest)
            break
        pending = rest
    nodes = [copy.deepcopy(n) for n in ordered]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def fused_nodes(model: onnx.ModelProto) -> list[str]:
    from ulsam_deploy.op_spec import OP_TYPE

    return [n.name for n in model.graph.node if n.op_type == OP_TYPE]


def precision_of(model: onnx.ModelProto) -> str:
    """'int8' (Q/DQ nodes), 'fp16' (fp16 initializers), else 'fp32'."""
    ops = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        return "int8"
    if any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


# ------------------------------------------------------------------------------- ORT running


def _session(model: onnx.ModelProto | bytes, custom_ops: bool, optimize: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:  # run the graph as written (Q/DQ as exact simulated quantization)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, bytes) else model.SerializeToString()
    if custom_ops:
        try:  # the fusion issue's NumPy SubspaceAttention for ORT (onnxruntime-extensions)
            from ulsam_deploy.backends.onnxrt.custom_ops import prepare_model, register_custom_ops
        except ImportError as exc:
            raise UserError("This ONNX has fused SubspaceAttention nodes, but the ONNX Runtime custom op "
                            "(ulsam_deploy.backends.onnxrt.custom_ops) is not available in this install; install "
                            "'ulsam-deploy[kernels]' or convert the unfused ONNX and pass --fuse.") from exc
        register_custom_ops(options)
        data = prepare_model(data)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def run_classifier(model: onnx.ModelProto | bytes, images: np.ndarray, batch: int = 32, custom_ops: bool = False,
                   optimize: bool = True) -> np.ndarray:
    """Logits (float32) of ``images`` through ``model`` on ONNX Runtime CPU; honours a static batch axis.

    ``optimize=False`` turns ONNX Runtime's graph optimizations off, so Q/DQ nodes run as written
    (fake quantization in fp32, exactly the Q/DQ semantics TensorRT implements with int8 kernels);
    with optimizations on, ORT swaps in its own fused int8 kernels, which deviate from them.
    """
    session = _session(model, custom_ops, optimize)
    inp = session.get_inputs()[0]
    dtype = _ORT_DTYPES.get(inp.type, np.float32)
    static = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = static or batch
    outs = []
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        n = len(chunk)
        if static and n < static:  # pad the last chunk of a static-batch model
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], static - n, axis=0)])
        out = session.run(None, {inp.name: np.ascontiguousarray(chunk, dtype=dtype)})[0]
        outs.append(np.asarray(out, dtype=np.float32)[:n])
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def verify_against_fp32(reference: onnx.ModelProto, candidate: onnx.ModelProto, data: EvalSet, batch: int = 32,
                        optimize_candidate: bool = True) -> dict:
    """Top-1 agreement, accuracies (labelled data) and logit differences of ``candidate`` vs ``reference``."""
    ref_logits = run_classifier(reference, data.images, batch, custom_ops=bool(fused_nodes(reference)))
    cand_logits = run_classifier(candidate, data.images, batch, custom_ops=bool(fused_nodes(candidate)),
                                 optimize=optimize_candidate)
    comparison = compare_outputs(ref_logits, cand_logits, atol=1e-2, rtol=1e-2)
    how = "" if optimize_candidate else ", graph optimizations off (Q/DQ executed as written)"
    figures = {"data": data.to_dict(), "reference": "fp32 ONNX on onnxruntime CPU",
               "candidate": f"converted ONNX on onnxruntime CPU{how}", "samples": len(data),
               "top1_agreement": comparison.top1_agreement, "top5_overlap": comparison.top5_overlap,
               "max_abs": comparison.max_abs, "mean_abs": comparison.mean_abs, "cosine": comparison.cosine}
    if data.labels is not None:
        acc_ref = float(np.mean(ref_logits.argmax(1) == data.labels))
        acc_cand = float(np.mean(cand_logits.argmax(1) == data.labels))
        figures.update(accuracy_reference=acc_ref, accuracy_candidate=acc_cand,
                       accuracy_drop_points=round((acc_ref - acc_cand) * 100, 4))
    return figures


# ---------------------------------------------------------------------------------- helpers


def _sidecar_of(path: Path) -> dict:
    from ulsam_deploy.steps.export import read_sidecar

    sidecar = read_sidecar(path)
    if sidecar is None:
        raise UserError(f"'{path}.json' (written by 'ulsam-deploy export' beside the ONNX) is missing or unreadable; the "
                        "precision passes need its input size and normalisation: re-export the model.")
    return sidecar


def _check_paths(source: Path, output: Path, force: bool) -> None:
    if source.resolve() == output.resolve():
        raise UserError(f"The output '{output}' is the input; choose another -o path.")
    if output.exists() and output.is_dir():
        raise UserError(f"'{output}' is a directory; give a file path such as {output / 'model.fp16.onnx'}.")
    if output.exists() and not force:
        raise UserError(f"'{output}' already exists; pass --force to overwrite it or choose another -o path.")


def _require_fp32(model: onnx.ModelProto, source: Path) -> None:
    current = precision_of(model)
    if current != "fp32":
        raise UserError(f"'{source}' is already {current}; convert the fp32 ONNX from 'ulsam-deploy export' instead.")


def _fuse(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict | None]:
    try:
        from ulsam_deploy.passes.fuse import fuse_model
    except ImportError as exc:
        raise UserError("The fusion pass (ulsam_deploy.passes.fuse) is not available in this install; drop --fuse.") from exc
    return fuse_model(model)


def _write(model: onnx.ModelProto, output: Path, sidecar: dict) -> Path:
    from ulsam_deploy.steps.export import write_json_atomic

    sidecar_path = output.with_name(output.name + ".json")
    save_onnx_atomic(model, output)
    sidecar["onnx"] = output.name
    sidecar["sha256"] = sha256_file(output)
    try:
        write_json_atomic(sidecar, sidecar_path)
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    return sidecar_path


def _new_sidecar(source_sidecar: dict, source: Path, model: onnx.ModelProto, section: dict, fusion) -> dict:
    sidecar = copy.deepcopy(source_sidecar)
    sidecar["nodes"] = len(model.graph.node)
    sidecar["ops"] = op_counts(model)
    if fusion is not None:
        sidecar["fused"] = fusion
    section["source"] = {"onnx": source.name, "sha256": sha256_file(source)}
    sidecar["precision"] = section
    inp = model.graph.input[0].type.tensor_type.elem_type
    out = model.graph.output[0].type.tensor_type.elem_type
    names = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}
    if isinstance(sidecar.get("input"), dict):
        sidecar["input"]["dtype"] = names.get(inp, str(inp))
    if isinstance(sidecar.get("output"), dict):
        sidecar["output"]["dtype"] = names.get(out, str(out))
    import onnxruntime

    sidecar.setdefault("versions", {})["onnxruntime"] = onnxruntime.__version__
    sidecar["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return sidecar


# ---------------------------------------------------------------------------------- fp16


def _fp16_converter():
    """(convert_float_to_float16, default op block list, tool name): onnxconverter-common's, else onnxruntime's copy."""
    try:
        import onnxconverter_common
        from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        return convert_float_to_float16, DEFAULT_OP_BLOCK_LIST, f"onnxconverter-common {onnxconverter_common.__version__}"
    except ImportError:
        import onnxruntime
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        return convert_float_to_float16, DEFAULT_OP_BLOCK_LIST, f"onnxruntime.transformers.float16 ({onnxruntime.__version__})"


def _dedupe_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop repeated identical nodes writing the same tensor (onnxruntime's float16 copy emits one Cast per blocked
    consumer of a tensor, all with the same output name; onnxconverter-common does not)."""
    seen: dict[str, bytes] = {}
    keep = []
    for node in model.graph.node:
        key = node.output[0] if node.output else None
        if key and key in seen:
            if seen[key] != node.SerializeToString(deterministic=True).replace(node.name.encode(), b""):
                raise UserError(f"The fp16 converter wrote tensor '{key}' twice with different nodes; please report it.")
            continue
        if key:
            seen[key] = node.SerializeToString(deterministic=True).replace(node.name.encode(), b"")
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def to_fp16(model: onnx.ModelProto, io_fp16: bool = False, keep_ulsam_fp32: bool = True) -> tuple[onnx.ModelProto, dict]:
    """The fp16 graph (not verified) and what was kept in fp32 (ops by type, ULSAM blocks by node)."""
    import warnings

    convert, default_block, tool = _fp16_converter()
    model = name_nodes(copy.deepcopy(model))
    regions = find_ulsam_regions(model) if keep_ulsam_fp32 else []
    node_block = [name for r in regions for name in r.nodes]
    ops = list(default_block) + list(FP16_BLOCKED_OPS)
    logging.getLogger("onnxruntime.transformers.float16").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per weight clamped to fp16's range
        converted = convert(model, min_positive_val=5.96e-08, max_finite_val=65504.0, keep_io_types=not io_fp16,
                            op_block_list=ops, node_block_list=node_block)
    converted = toposort(_dedupe_outputs(converted))
    del converted.graph.value_info[:]  # stale type hints (the converters leave some fp32 ones on fp16 tensors)
    kept = {"op_types": [op for op in FP16_BLOCKED_OPS if any(n.op_type == op for n in model.graph.node)],
            "ulsam_blocks": len(regions) + len(fused_nodes(model)), "ulsam_nodes": node_block,
            "casts_added": sum(1 for n in converted.graph.node if n.op_type == "Cast")
                           - sum(1 for n in model.graph.node if n.op_type == "Cast"),
            "tool": tool}
    return converted, kept


def _load_fp32_source(source: Path, output: Path, force: bool, stage: Stage) -> tuple[onnx.ModelProto, dict]:
    """Check the paths, then load the fp32 ONNX a precision pass starts from and its sidecar."""
    _check_paths(source, output, force)
    with stage(f"Loading {source}"):
        model = load_onnx(source)
        sidecar = _sidecar_of(source)
        _require_fp32(model, source)
    return model, sidecar


def convert_fp16(source: str | os.PathLike, output: str | os.PathLike, verify: EvalSet,
                 options: PrecisionOptions | None = None, stage: Stage = _quiet_stage,
                 warn: Warn = _no_warn) -> PrecisionResult:
    """fp32 ONNX -> fp16 ONNX, verified (top-1 agreement >= ``options.min_agreement`` on ``verify``), with sidecar."""
    options = options or PrecisionOptions()
    source, output = Path(source), Path(output)
    model, sidecar = _load_fp32_source(source, output, options.force, stage)
    seconds: dict[str, float] = {}
    work, fusion = model, None
    if options.fuse and not fused_nodes(model):
        t0 = time.perf_counter()
        with stage("Fusing ULSAM blocks into SubspaceAttention"):
            work, fusion = _fuse(copy.deepcopy(model))
        seconds["fuse"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with stage("Converting to fp16 (Softmax, reductions and ULSAM kept fp32)"):
        converted, kept = to_fp16(work, io_fp16=options.io == "fp16", keep_ulsam_fp32=options.keep_ulsam_fp32)
        converted = fit_ir_version(converted)
        check_model(converted)
    seconds["convert"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with stage(f"Verifying fp16 against fp32 on ONNX Runtime ({len(verify)} real images)"):
        figures = verify_against_fp32(model, converted, verify, options.batch)
    seconds["verify"] = time.perf_counter() - t0
    gate = {"metric": "top1_agreement", "threshold": options.min_agreement,
            "value": figures["top1_agreement"], "passed": figures["top1_agreement"] >= options.min_agreement}
    figures["gate"] = gate
    if not gate["passed"]:
        raise ParityError(f"fp16 agrees with fp32 on the top-1 class for {figures['top1_agreement']:.1%} of "
                          f"{len(verify)} images, below the required {options.min_agreement:.1%}; nothing was written "
                          "(keep more ops in fp32, or lower --min-agreement if that is acceptable).")
    section = {"mode": "fp16", "io_dtype": "float16" if options.io == "fp16" else "float32",
               "tool": f"convert_float_to_float16 ({kept.pop('tool')})", "kept_fp32": kept, "verification": figures, "seconds": seconds}
    new_sidecar = _new_sidecar(sidecar, source, converted, section, fusion)
    with stage(f"Writing {output}"):
        sidecar_path = _write(converted, output, new_sidecar)
    return PrecisionResult(output, sidecar_path, "fp16", figures, section, new_sidecar, seconds)


# ---------------------------------------------------------------------------------- int8


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over an EvalSet, in equal batches.

    Length and ``set_range`` count batches: with ``CalibStridedMinMax`` ORT calibrates a few
    batches at a time (its histogram calibrators otherwise keep every activation of every image in
    memory). Batches are equal in size (a static batch axis needs it, and ORT's histogram
    calibrators fail on a short last batch): the last one is topped up from the start of the set.
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
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None


def int8_settings(calib_method: str = "percentile") -> dict:
    """The exact quantize_static arguments (besides model, reader and exclusions) we use for TensorRT."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    return {
        "quant_format": QuantFormat.QDQ,
        "per_channel": True,
        "reduce_range": False,
        "activation_type": QuantType.QInt8,
        "weight_type": QuantType.QInt8,
        "op_types_to_quantize": list(INT8_OP_TYPES),
        "calibrate_method": {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                             "percentile": CalibrationMethod.Percentile}[calib_method],
        "extra_options": {
            "ActivationSymmetric": True,  # zero point 0: TensorRT supports symmetric int8 only
            "WeightSymmetric": True,
            "QuantizeBias": False,  # TensorRT has no int32 bias DequantizeLinear; biases stay float
            "AddQDQPairToWeight": True,  # float weights behind Q->DQ (TensorRT folds them)
            "OpTypesToExcludeOutputQuantization": list(INT8_NO_OUTPUT_QUANT),  # let TensorRT fuse conv+act
            "QDQKeepRemovableActivations": True,  # never drop Relu/Clip
        },
    }


def to_int8(model: onnx.ModelProto, calib: EvalSet, calib_method: str = "percentile", batch: int = 32,
            keep_ulsam_fp32: bool = True) -> tuple[onnx.ModelProto, dict]:
    """Quantize an unfused fp32 graph with ORT's static QDQ quantizer (not verified); returns the model and facts."""
    from onnxruntime.quantization import quantize_static

    model = name_nodes(copy.deepcopy(model))
    regions = find_ulsam_regions(model) if keep_ulsam_fp32 else []
    exclude = [name for r in regions for name in r.nodes]
    settings = int8_settings(calib_method)
    reader = _Reader(model.graph.input[0].name, calib.images, batch, _static_batch(model))
    settings["extra_options"]["CalibStridedMinMax"] = _stride(len(reader))  # a few batches per pass: bounded memory
    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static logs through the root logger
    try:
        with tempfile.TemporaryDirectory(prefix="ulsam-int8-") as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            onnx.save(fit_ir_version(model), src)
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
                quantize_static(str(src), str(dst), reader, nodes_to_exclude=exclude, **settings)
            quantized = onnx.load(str(dst))
    finally:
        root.setLevel(level)
    facts = {"excluded_ulsam_blocks": len(regions), "excluded_nodes": exclude,
             "quantize_linear": sum(1 for n in quantized.graph.node if n.op_type == "QuantizeLinear"),
             "dequantize_linear": sum(1 for n in quantized.graph.node if n.op_type == "DequantizeLinear")}
    return quantized, facts


def qdq_summary(model: onnx.ModelProto) -> dict:
    """Zero points (must all be 0), per-channel weight count and int8 types, read back from the Q/DQ graph."""
    inits = {t.name: t for t in model.graph.initializer}
    zero_points, per_channel, types = [], 0, set()
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3:
            continue
        zp = inits.get(node.input[2])
        scale = inits.get(node.input[1])
        if zp is not None:
            arr = numpy_helper.to_array(zp)
            zero_points.append(int(np.abs(arr).max()) if arr.size else 0)
            types.add(onnx.helper.tensor_dtype_to_np_dtype(zp.data_type).name)
        if scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1:
            per_channel += 1
    return {"quantize_nodes": len(zero_points), "max_abs_zero_point": max(zero_points, default=0),
            "per_channel_quantizers": per_channel, "zero_point_types": sorted(types)}


def quantize_int8(source: str | os.PathLike, output: str | os.PathLike, calib: EvalSet, verify: EvalSet,
                  options: PrecisionOptions | None = None, stage: Stage = _quiet_stage,
                  warn: Warn = _no_warn) -> PrecisionResult:
    """Unfused fp32 ONNX -> int8 Q/DQ ONNX (then fused if ``options.fuse``), verified on ``verify``, with sidecar."""
    options = options or PrecisionOptions()
    source, output = Path(source), Path(output)
    model, sidecar = _load_fp32_source(source, output, options.force, stage)
    seconds: dict[str, float] = {}
    if fused_nodes(model):
        raise UserError(f"'{source}' is already fused; int8 calibrates the unfused graph (softmax/attention kept out of "
                        "int8), so pass the unfused ONNX from 'ulsam-deploy export' and add --fuse.")
    if len(calib) < MIN_CALIB_IMAGES:
        warn(f"Calibrating on {len(calib)} images; {MIN_CALIB_IMAGES} or more give steadier int8 ranges.")
    t0 = time.perf_counter()
    with stage(f"Calibrating and quantizing to int8 ({len(calib)} images, {options.calib_method}, symmetric, "
               "per-channel)"):
        quantized, facts = to_int8(model, calib, options.calib_method, options.batch, options.keep_ulsam_fp32)
    seconds["quantize"] = time.perf_counter() - t0
    fusion = None
    if options.fuse:
        t0 = time.perf_counter()
        with stage("Fusing ULSAM blocks into SubspaceAttention"):
            quantized, fusion = _fuse(quantized)
        seconds["fuse"] = time.perf_counter() - t0
    with stage("Checking with onnx.checker"):
        quantized = fit_ir_version(quantized)
        check_model(quantized)
        summary = qdq_summary(quantized)
    if summary["max_abs_zero_point"] != 0:  # symmetric is what TensorRT accepts; never ship anything else
        raise UserError("The quantizer produced non-zero zero points, which TensorRT rejects; this is a bug, please report it.")
    t0 = time.perf_counter()
    with stage(f"Verifying int8 against fp32 on ONNX Runtime ({len(verify)} real images)"):
        figures = verify_against_fp32(model, quantized, verify, options.batch, optimize_candidate=False)
        # for information only: ONNX Runtime's own fused int8 CPU kernels (not what TensorRT runs)
        kernels = verify_against_fp32(model, quantized, verify, options.batch, optimize_candidate=True)
        figures["onnxruntime_int8_kernels"] = {k: kernels[k] for k in ("top1_agreement", "accuracy_candidate",
                                                                       "accuracy_drop_points") if k in kernels}
    seconds["verify"] = time.perf_counter() - t0
    if "accuracy_drop_points" in figures:
        gate = {"metric": "accuracy_drop_points", "threshold": options.max_drop,
                "value": figures["accuracy_drop_points"], "passed": figures["accuracy_drop_points"] <= options.max_drop}
    else:  # unlabelled: |accuracy change| <= disagreement, so agreement >= 1 - max_drop bounds it
        need = 1.0 - options.max_drop / 100.0
        gate = {"metric": "top1_agreement", "threshold": need, "value": figures["top1_agreement"],
                "passed": figures["top1_agreement"] >= need,
                "note": "unlabelled data: agreement >= 1 - max_drop bounds the accuracy change"}
    figures["gate"] = gate
    if not gate["passed"]:
        if gate["metric"] == "accuracy_drop_points":
            why = (f"int8 top-1 accuracy is {figures['accuracy_candidate']:.2%} against fp32's "
                   f"{figures['accuracy_reference']:.2%} ({figures['accuracy_drop_points']:.2f} points lost, more than "
                   f"--max-drop {options.max_drop:g})")
        else:
            why = (f"int8 agrees with fp32 on {figures['top1_agreement']:.1%} of {len(verify)} unlabelled images, below "
                   f"{gate['threshold']:.1%}")
        raise ParityError(f"{why}; nothing was written (try more calibration images, --calib-method percentile or "
                          "entropy, or labelled --verify-data).")
    import onnxruntime

    section = {"mode": "int8", "io_dtype": "float32",
               "tool": f"onnxruntime.quantization.quantize_static (onnxruntime {onnxruntime.__version__})",
               "format": "QDQ", "symmetric": True, "per_channel_weights": True, "bias": "float",
               "op_types": list(INT8_OP_TYPES), "kept_fp32": {"ulsam_blocks": facts["excluded_ulsam_blocks"],
                                                             "ulsam_nodes": facts["excluded_nodes"]},
               "qdq": summary,
               "calibration": {**calib.to_dict(), "method": options.calib_method,
                               "enough": len(calib) >= MIN_CALIB_IMAGES, "graph": "unfused"},
               "fused_after_quantization": bool(options.fuse),
               "verification": figures, "seconds": seconds}
    new_sidecar = _new_sidecar(sidecar, source, quantized, section, fusion)
    with stage(f"Writing {output}"):
        sidecar_path = _write(quantized, output, new_sidecar)
    return PrecisionResult(output, sidecar_path, "int8", figures, section, new_sidecar, seconds)


# ----------------------------------------------------------------------------- entry point


def default_output(source: Path, precision: str) -> Path:
    return source.with_name(f"{source.stem}.{precision}.onnx")


def convert_precision(source: str | os.PathLike, output: str | os.PathLike | None, precision: str, *,
                      calib_data: str | os.PathLike | EvalSet | None = None,
                      verify_data: str | os.PathLike | EvalSet | None = None,
                      calib_limit: int | None = 512, verify_limit: int | None = None,
                      options: PrecisionOptions | None = None, stage: Stage = _quiet_stage,
                      warn: Warn = _no_warn) -> PrecisionResult:
    """``ulsam-deploy convert``: resolve the data (directories or EvalSets), then run the fp16 or int8 pass.

    Verification data defaults to real labelled images that fit the model (Fashion-MNIST test set for
    1-channel 10-class models, foolbox's ImageNet photos for 3-channel 1000-class models). int8 needs
    ``calib_data``; a directory of idx files is read as its train split for calibration and its test
    split for verification.
    """
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be fp16 or int8, not '{precision}'.")
    options = options or PrecisionOptions()
    source = Path(source)
    if not source.exists():
        raise UserError(f"ONNX file '{source}' does not exist; check the path or run 'ulsam-deploy export' first.")
    output = Path(output) if output is not None else default_output(source, precision)
    _check_paths(source, output, options.force)
    if precision == "fp16" and calib_data is not None:
        raise UserError("--calib-data is for --precision int8; fp16 needs no calibration.")
    if precision == "int8" and options.io == "fp16":
        raise UserError("--io fp16 applies to --precision fp16; int8 Q/DQ models keep fp32 I/O.")
    if precision == "int8" and calib_data is None:
        raise UserError("int8 needs real calibration images: pass --calib-data DIR (an ImageFolder, a flat folder of "
                        f"images, or a folder of idx files); {MIN_CALIB_IMAGES} or more are recommended.")
    for limit, flag in ((calib_limit, "--calib-limit"), (verify_limit, "--verify-limit")):
        if limit is not None and limit < 1:
            raise UserError(f"{flag} must be a positive number of images, not {limit}.")
    sidecar = _sidecar_of(source)
    preprocess = preprocess_from_sidecar(sidecar)
    class_names = sidecar.get("class_names")
    num_classes = (sidecar.get("config") or {}).get("num_classes")

    def resolve(data, split, limit, what):
        if isinstance(data, EvalSet):
            return data
        with stage(f"Reading {what} images from {data}"):
            return load_eval_set(data, preprocess, split=split, limit=limit, class_names=class_names,
                                 num_classes=num_classes)

    if verify_data is None:
        with stage("Reading the default verification images"):
            verify = default_verify_set(sidecar, preprocess, verify_limit)
        if verify is None:
            raise UserError("No default verification images fit this model (they exist for 1-channel 10-class and "
                            "3-channel 1000-class models); pass --verify-data DIR with real images.")
    else:
        verify = resolve(verify_data, "test", verify_limit, "verification")
    if precision == "fp16":
        return convert_fp16(source, output, verify, options, stage, warn)
    if not isinstance(calib_data, EvalSet) and not isinstance(verify_data, (EvalSet, type(None))) \
            and Path(calib_data).resolve() == Path(verify_data).resolve():
        from ulsam_deploy.data.evalset import is_idx_dir

        if not is_idx_dir(Path(calib_data)):  # an idx folder gives its train split and its test split
            warn("Calibration and verification read the same folder, so the int8 figures are optimistic; give "
                 "--verify-data images that were not used for calibration.")
    calib = resolve(calib_data, "train", calib_limit, "calibration")
    return quantize_int8(source, output, calib, verify, options, stage, warn)


__all__ = ["PRECISIONS", "PrecisionOptions", "PrecisionResult", "UlsamRegion", "convert_fp16", "convert_precision",
           "find_ulsam_regions", "int8_settings", "precision_of", "qdq_summary", "quantize_int8", "run_classifier",
           "to_fp16", "to_int8", "verify_against_fp32"]
