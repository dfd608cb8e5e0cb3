"""``convert``: fp32 ONNX -> fp16 or int8 ONNX, verified on real images the way the artifact will run.

The precision lives in the ONNX file itself (TensorRT 11 builds strongly typed networks only; TensorRT 10
supports the same mode): see :mod:`ulsam_deploy.passes.fp16` and :mod:`ulsam_deploy.passes.int8`.

Verification runs the fp32 source and the converted model on ONNX Runtime CPU over real images, each
through the runner that runs it everywhere else (an int8 model for TensorRT as exact Q/DQ, one for ONNX
Runtime in a default session), and asks the one judge with the precision's tolerances
(:func:`ulsam_deploy.backends.judge.tolerances_for`; ``--min-agreement`` and ``--max-drop`` override
them). Nothing is written when the verdict fails.

A backbone (feature-map outputs) is judged on every map with the precision's element-wise and cosine limits,
without top-1 (it has no classes); a dynamic-H/W model is calibrated and verified at its preprocessing size,
which is the opt size of its range.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

from ulsam_deploy.declared import Flag, check_flags
from ulsam_deploy.errors import UserError
from ulsam_deploy.events import SILENT, Events
from ulsam_deploy.passes import CALIB_METHODS, INT8_TARGETS
from ulsam_deploy.steps._step import Step, StepResult, load_with_sidecar

PRECISIONS = ("fp16", "int8")
MIN_CALIB_IMAGES = 300
DEFAULT_CALIB_METHOD = {"tensorrt": "percentile", "ort": "minmax"}


@dataclass
class ConvertOptions:
    precision: Annotated[str, Flag("--precision", choices=PRECISIONS)] = "fp16"
    # int8: the runtime the model is made for
    target: Annotated[str, Flag("--target", choices=INT8_TARGETS)] = "tensorrt"
    io: Annotated[str, Flag("--io", choices=("fp32", "fp16"))] = "fp32"  # fp16: graph I/O stays fp32 unless "fp16"
    fuse: bool = False  # fuse ULSAM blocks into SubspaceAttention (after quantizing, for int8)
    force: bool = False
    # fp16 gate: top-1 agreement with fp32
    min_agreement: Annotated[float, Flag("--min-agreement", gt=0, le=1)] = 0.995
    # int8 gate: top-1 accuracy points lost against fp32
    max_drop: Annotated[float, Flag("--max-drop", ge=0, le=100, why="accuracy points")] = 1.0
    # default per target: percentile (tensorrt), minmax (ort)
    calib_method: Annotated[str | None, Flag("--calib-method", choices=CALIB_METHODS)] = None
    calib_limit: Annotated[int, Flag("--calib-limit", ge=1, why="images")] = 512
    verify_limit: Annotated[int | None, Flag("--verify-limit", ge=1, why="images")] = None
    reduce_range: bool | None = None  # int8 --target ort: None = what the CPU needs
    # images per ONNX Runtime call (calibration and verification)
    batch: Annotated[int, Flag("the batch size", ge=1)] = 32
    threads: Annotated[int | None, Flag("--threads", ge=1, le=256)] = None
    keep_ulsam_fp32: bool = True
    tolerances: dict | None = None  # more overrides of the judge's tolerances, as bench's --threshold gives them

    def __post_init__(self) -> None:
        check_flags(self)
        if self.precision == "int8" and self.io == "fp16":
            raise UserError("--io fp16 applies to --precision fp16; int8 Q/DQ models keep fp32 I/O.")
        if self.precision == "int8" and self.target == "tensorrt" and self.reduce_range:
            raise UserError("--reduce-range applies to --target ort; TensorRT's int8 is symmetric 8-bit, so drop it.")

    @property
    def method(self) -> str:
        return self.calib_method or DEFAULT_CALIB_METHOD[self.target]

    def tolerance_overrides(self) -> dict:
        """The gate flags as overrides of the one judge's tolerances (``tolerances`` applied last)."""
        out = {"fp16": {"min_top1_agreement": self.min_agreement}, "int8": {"max_top1_drop": self.max_drop / 100.0}}
        for scope, values in (self.tolerances or {}).items():
            out.setdefault(scope, {}).update(values)
        return out


def artifact_tag(precision: str, target: str | None = None, fused: bool = False) -> str:
    """One naming rule for every artifact: precision, then the int8 target, then fusion (``fp16``,
    ``int8-tensorrt.fused``, ``int8-ort``); fp32 is the plain name (``fused`` alone when fused)."""
    parts = [] if precision == "fp32" else [precision + (f"-{target}" if precision == "int8" else "")]
    return ".".join(parts + (["fused"] if fused else []))


def default_output(source: Path, options: ConvertOptions) -> Path:
    stem = source.stem[:-len(".fused")] if source.stem.endswith(".fused") else source.stem
    fused = options.fuse or source.stem.endswith(".fused")
    return source.with_name(f"{stem}.{artifact_tag(options.precision, options.target, fused)}.onnx")


def _images(data, preprocess, split: str, limit, sidecar, what: str, events: Events):
    from ulsam_deploy.data.sources import ImageSet, default_verify_set, load_images

    if isinstance(data, ImageSet):
        return data
    backbone = not sidecar.is_classifier
    num_classes = sidecar.num_classes
    class_names = sidecar.model.class_names if sidecar.model is not None and not backbone else None
    if data is None:
        # a backbone has no classes: the default photos of its channel count do, unlabelled
        classes = (10 if preprocess.in_channels == 1 else 1000) if backbone else num_classes
        with events.stage(f"Reading the default {what} images"):
            images = default_verify_set(classes, preprocess, limit, split)
        if images is None and split == "train":
            raise UserError("int8 needs real calibration images and no default set fits this model (Fashion-MNIST's "
                            "training split serves 1-channel 10-class models); pass --calib-data DIR (an ImageFolder, "
                            f"a flat folder of images, or a folder of idx files); {MIN_CALIB_IMAGES} or more are "
                            "recommended.")
        if images is None:
            raise UserError(f"No default {what} images fit this model (they exist for 1-channel 10-class and "
                            f"3-channel 1000-class classifiers, and for backbones); pass --verify-data DIR with "
                            "real images.")
        if backbone:
            images.labels = None
        return images
    with events.stage(f"Reading {what} images from {data}"):
        images = load_images(data, preprocess, split=split, limit=limit, class_names=class_names,
                             num_classes=num_classes)
    for warning in images.warnings:
        events.warn(f"{what} images: {warning}")
    return images


def verify(reference, candidate, images, precision: str, overrides: dict, *, batch: int = 32, threads=None,
           events: Events = SILENT, features: bool = False):
    """The judge's verdict on ``candidate`` against ``reference`` (ModelProtos) over ``images``, each run by the
    ONNX Runtime runner that runs it everywhere else, on every output (``features``: a backbone's feature maps,
    judged without top-1, see :func:`~ulsam_deploy.backends.judge.tolerances_for`)."""
    from ulsam_deploy.backends.base import infer_in_chunks
    from ulsam_deploy.backends.judge import judge, tolerances_for
    from ulsam_deploy.backends.onnxrt.runner import OrtRunner

    total = len(images)
    outputs = []
    for k, (model, name) in enumerate(((reference, "fp32"), (candidate, precision))):
        with OrtRunner(model.SerializeToString(), threads=threads) as runner:
            done = lambda d, n, name=name: events.progress(f"Verifying: {name} on images", d, n)  # noqa: E731
            outputs.append(infer_in_chunks(runner, images.images, batch, progress=done))
            mode, names = runner.mode, list(runner.output_names)
    verdict = judge(outputs[0], outputs[1], tolerances_for(precision, overrides, features=features),
                    labels=images.labels if images.labelled and not features else None, names=names,
                    classifier=False if features else None)
    return verdict, {"images": images.describe(), "samples": total, "reference": "fp32 ONNX on onnxruntime CPU",
                     "candidate": f"{precision} ONNX on onnxruntime CPU" + (f" ({mode})" if mode else "")}


def convert_file(source: str | os.PathLike, output: str | os.PathLike | None, options: ConvertOptions, *,
                 calib_data=None, verify_data=None, events: Events = SILENT) -> StepResult:
    """``ulsam-deploy convert``: check the paths, read the data, run the pass, verify, write (see module doc).

    ``calib_data`` / ``verify_data``: a path (ImageFolder, flat folder, idx folder) or an ImageSet. The
    verification default is real labelled images that fit the model (Fashion-MNIST test set for 1-channel
    10-class models, foolbox's ImageNet photos for 3-channel 1000-class ones).
    """
    from ulsam_deploy.sidecars import TensorSpec
    from ulsam_deploy.data.sources import ImageSet, is_idx_dir, preprocess_of
    from ulsam_deploy.onnx_graph import fused_nodes, io_specs, precision_of

    source = Path(source)
    output = Path(output) if output is not None else default_output(source, options)
    precision = options.precision
    if precision == "fp16" and calib_data is not None:
        raise UserError("--calib-data is for --precision int8; fp16 needs no calibration.")
    with Step("convert", output, force=options.force, inputs=[source], events=events,
              options={k: v for k, v in asdict(options).items() if k not in ("force", "threads")}) as step:
        with step.stage(f"Loading {source}"):
            model, sidecar = load_with_sidecar(source)
            current = precision_of(model)
            if current != "fp32":
                raise UserError(f"'{source}' is already {current}; convert the fp32 ONNX from 'ulsam-deploy export' "
                                "instead.")
            if precision == "int8" and fused_nodes(model):
                raise UserError(f"'{source}' is already fused; int8 calibrates the unfused graph (softmax/attention "
                                "kept out of int8), so pass the unfused ONNX from 'ulsam-deploy export' and add --fuse.")
        preprocess = preprocess_of(sidecar)
        verify_set = _images(verify_data, preprocess, "test", options.verify_limit, sidecar, "verification", events)
        report: dict = {}
        if precision == "fp16":
            from ulsam_deploy.passes.fp16 import to_fp16

            work = model
            if options.fuse and not fused_nodes(model):
                from ulsam_deploy.passes.fuse import fuse_model

                with step.stage("Fusing ULSAM blocks into SubspaceAttention", "fuse"):
                    work, report["fusion"] = fuse_model(model)
            with step.stage("Converting to fp16 (Softmax, reductions and unfused ULSAM kept fp32)", "convert"):
                converted, report["kept_fp32"] = to_fp16(work, io_fp16=options.io == "fp16",
                                                         keep_ulsam_fp32=options.keep_ulsam_fp32)
        else:
            from ulsam_deploy.passes.int8 import to_int8

            if calib_data is not None and not isinstance(calib_data, ImageSet) \
                    and not isinstance(verify_data, (ImageSet, type(None))) \
                    and Path(calib_data).resolve() == Path(verify_data).resolve() and not is_idx_dir(Path(calib_data)):
                events.warn("Calibration and verification read the same folder, so the int8 figures are optimistic; "
                            "give --verify-data images that were not used for calibration.")
            calib = _images(calib_data, preprocess, "train", options.calib_limit, sidecar, "calibration", events)
            if len(calib) < MIN_CALIB_IMAGES:
                events.warn(f"Calibrating on {len(calib)} images; {MIN_CALIB_IMAGES} or more give steadier int8 ranges.")
            how = ("symmetric, per-channel, for TensorRT" if options.target == "tensorrt"
                   else "U8S8, per-channel, for ONNX Runtime's CPU kernels")
            reduce_range = False
            if options.target == "ort":
                from ulsam_deploy.backends.onnxrt.cpu import int8_capabilities, ort_int8_recipe

                caps = int8_capabilities()
                recipe = ort_int8_recipe(caps, options.reduce_range)
                reduce_range = recipe.reduce_range
                report["cpu"], report["recipe"] = caps.to_dict(), recipe.to_dict()
                how += f", {'reduce_range' if reduce_range else 'full range'} ({caps.summary()})"
            with step.stage(f"Calibrating and quantizing to int8 ({len(calib)} images, {options.method}, {how})",
                            "quantize"):
                converted, facts = to_int8(model, calib.images, target=options.target, calib_method=options.method,
                                           batch=options.batch, keep_ulsam_fp32=options.keep_ulsam_fp32,
                                           reduce_range=reduce_range)
            report["int8"] = facts
            if facts.get("calibration_fallback"):
                events.warn(facts["calibration_fallback"] + ".")
            report["calibration"] = {**calib.describe(), "method": options.method,
                                     "fallback": facts.get("calibration_fallback"),
                                     "enough": len(calib) >= MIN_CALIB_IMAGES, "graph": "unfused"}
            if options.fuse:
                from ulsam_deploy.passes.fuse import fuse_model

                with step.stage("Fusing ULSAM blocks into SubspaceAttention", "fuse"):
                    converted, report["fusion"] = fuse_model(converted)
            if options.target == "tensorrt":
                from ulsam_deploy.passes.int8 import tensorrt_fusions

                facts["tensorrt_fusions"] = tensorrt_fusions(converted)  # of the graph as written
                events.detail(f"TensorRT int8 layout: {facts['tensorrt_fusions']['summary']}")
        converted = step.finalize(converted)
        with step.stage(f"Verifying {precision} against fp32 on ONNX Runtime ({len(verify_set)} real images)",
                        "verify"):
            verdict, report["verification"] = verify(model, converted, verify_set, precision,
                                                     options.tolerance_overrides(), batch=options.batch,
                                                     threads=options.threads, events=events,
                                                     features=not sidecar.is_classifier)
        step.require(verdict, f"{precision} misses its gate on {len(verify_set)} real images",
                     "try more calibration images, another --calib-method, --target ort for ONNX Runtime, or "
                     "labelled --verify-data" if precision == "int8" else
                     "keep more ops in fp32, or lower --min-agreement if that is acceptable",
                     reference="the fp32 model on ONNX Runtime")
        new = sidecar.model_copy(deep=True)
        new.precision = precision
        new.int8_target = options.target if precision == "int8" else None
        new.fused_blocks = sidecar.fused_blocks + int((report.get("fusion") or {}).get("fused", 0))
        inputs, outputs = io_specs(converted)
        new.inputs = [TensorSpec(**{**old.model_dump(), "dtype": spec["dtype"]}) for old, spec in zip(new.inputs, inputs)]
        new.outputs = [TensorSpec(**{**old.model_dump(), "dtype": spec["dtype"]})
                       for old, spec in zip(new.outputs, outputs)]
        record = step.record(source=source, report=report, verdict=verdict)
        return step.write_onnx(converted, new, record, verdict=verdict, report=report)


__all__ = ["ConvertOptions", "convert_file", "default_output", "verify"]
