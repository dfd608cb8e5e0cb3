"""TensorRT's own words (ONNX parser errors, builder log) mapped to one sentence where we know the cause.

The full parser errors are always shown too (``format_parser_errors``); the sentence says what to do.
``ParserError`` methods used: ``code()``, ``desc()``, ``node()``, ``node_name()``, ``node_operator()``
(present in the 10.3.0, 10.16.1 and 11.4.0 Python bindings; the tests call them on fakes made from
``trt.ParserError`` itself).
"""

from __future__ import annotations

from dataclasses import dataclass

from ulsam_deploy.op_spec import OP_TYPE

PLUGIN_HINT = ("pass --plugin lib after 'ulsam-deploy build-plugin' (or --plugin-lib PATH to the built "
               "libulsam_subspace_attention_plugin.so), or --plugin python on TensorRT 10.9 or newer")


@dataclass
class ParserIssue:
    code: str
    desc: str
    node: int
    node_name: str
    node_operator: str

    def __str__(self) -> str:
        where = f"node {self.node}" + (f" '{self.node_name}'" if self.node_name else "") + \
                (f" ({self.node_operator})" if self.node_operator else "")
        return f"[{self.code}] {where}: {self.desc}"


def _call(obj, name, default=""):
    try:
        value = getattr(obj, name)()
    except Exception:  # noqa: BLE001 - older bindings lack some accessors
        return default
    return value


def read_parser_errors(parser) -> list[ParserIssue]:
    issues = []
    for index in range(int(parser.num_errors)):
        err = parser.get_error(index)
        code = _call(err, "code")
        issues.append(ParserIssue(str(code).split(".")[-1], str(_call(err, "desc")).strip(), int(_call(err, "node", -1) or -1),
                                  str(_call(err, "node_name") or ""), str(_call(err, "node_operator") or "")))
    return issues


def format_parser_errors(issues: list[ParserIssue]) -> str:
    return "\n".join(f"  {i + 1}. {issue}" for i, issue in enumerate(issues))


def explain_parser_errors(issues: list[ParserIssue], onnx_name: str, trt_version: str) -> str:
    """One sentence for the first error we recognise (else the first error itself)."""
    if not issues:
        return f"TensorRT {trt_version}'s ONNX parser rejected '{onnx_name}' without saying why; re-export it."
    for issue in issues:
        text = issue.desc.lower()
        if issue.node_operator == OP_TYPE or OP_TYPE.lower() in text:
            return (f"TensorRT could not find the {OP_TYPE} plugin for node '{issue.node_name or issue.node}'; "
                    f"{PLUGIN_HINT}.")
        if "plugin" in text and ("not found" in text or "creator" in text):
            return f"TensorRT could not find a plugin for node '{issue.node_name or issue.node}' ({issue.node_operator}); {PLUGIN_HINT}."
    first = issues[0]
    text = first.desc.lower()
    if first.code == "MODEL_DESERIALIZE_FAILED" or "protobuf" in text:
        return f"'{onnx_name}' is not a readable ONNX model for TensorRT {trt_version}; re-export it."
    if "opset" in text or "ir version" in text or "ir_version" in text:
        return (f"TensorRT {trt_version} does not support this ONNX opset/IR version ({first.desc}); re-export with "
                "'ulsam-deploy export --opset 17'.")
    if "no importer registered" in text or first.code == "UNSUPPORTED_NODE":
        return (f"TensorRT {trt_version}'s ONNX parser does not support op {first.node_operator or '?'} (node "
                f"'{first.node_name}'); re-export with another --opset, or upgrade TensorRT.")
    if first.code == "UNSUPPORTED_NODE_DATATYPE":
        return (f"TensorRT {trt_version} does not support the data type at node '{first.node_name}' "
                f"({first.node_operator}); convert the fp32 export again with 'ulsam-deploy convert'.")
    if first.code == "UNSUPPORTED_NODE_DYNAMIC" or "dynamic" in text:
        return (f"Node '{first.node_name}' ({first.node_operator}) needs static shapes in TensorRT {trt_version}; "
                "re-export with --static-batch N.")
    return f"TensorRT {trt_version}'s ONNX parser failed at node '{first.node_name}' ({first.node_operator}): {first.desc}."


def explain_build_failure(errors: list[str], trt_version: str, timing_cache: str | None = None) -> str:
    """One sentence for a failed build_serialized_network, from the error lines TensorRT logged."""
    text = "\n".join(errors).lower()
    if "optimization profile" in text and ("dynamic" in text or "no optimization profile" in text):
        return ("The network has a dynamic input and no usable optimization profile; pass --batch-profile MIN:OPT:MAX "
                "(e.g. 1:8:32).")
    if "out of memory" in text or "insufficient memory" in text or "cudaerrormemoryallocation" in text \
            or ("workspace" in text and "memory" in text):
        return "TensorRT ran out of GPU memory while building; raise --workspace, use a smaller --batch-profile, or free GPU memory."
    if "dla" in text and ("not supported" in text or "cannot run" in text or "unsupported" in text):
        return "Some layers cannot run on DLA; add --gpu-fallback (they then run on the GPU) or build without --dla-core."
    if "plugin" in text and ("not found" in text or "creator" in text or "could not find" in text):
        return f"TensorRT could not find the {OP_TYPE} plugin while building; {PLUGIN_HINT}."
    if "timing cache" in text and ("mismatch" in text or "incompatible" in text or "invalid" in text):
        return (f"The timing cache '{timing_cache}' was made by another TensorRT version or GPU; delete it or "
                "pass another --timing-cache file.")
    if "cuda initialization failure" in text or "error: 35" in text or "insufficient driver" in text:
        return ("TensorRT could not initialise CUDA (no usable GPU, or a driver older than this TensorRT needs); "
                "check 'nvidia-smi' and 'ulsam-deploy doctor'.")
    if "factory function returned nullptr" in text:
        return (f"TensorRT {trt_version} could not create a Builder (libnvinfer is missing or not a working TensorRT "
                "library); check 'ulsam-deploy doctor'.")
    last = errors[-1].strip() if errors else "no error message was logged"
    return f"TensorRT {trt_version} could not build the engine: {last.splitlines()[0][:300]}"
