"""``bench``: parity and latency of every backend on identical inputs, as a library.

``run_bench(models, options) -> BenchReport`` is what the CLI (and ``demo``) call:

1. resolve each model (checkpoint, ONNX + sidecar, engine + sidecar, or a spec such as
   ``mv2+17:1/g4`` built with seeded random weights for latency-only comparisons);
2. open one runner per backend (torch / ort per ONNX file and provider / trt per engine);
   unavailable ones are listed as skipped with their reason;
3. build the inputs once (seeded random tensors or preprocessed real images);
4. parity: every runner on all inputs, compared with the model's reference runner and judged by the one
   judge (:mod:`ulsam_deploy.backends.judge`) with the tolerances of each artifact's precision, exactly as
   ``convert`` judges it; each runner runs its artifact as it is meant to run (an int8 model for TensorRT as
   exact Q/DQ, one for ONNX Runtime in a default session);
5. latency: for each batch size, all runners of all models timed in ONE interleaved loop
   (:mod:`ulsam_deploy.bench.latency`);
6. with two or more models, MACs ratio next to measured latency ratio, per backend.

Nothing is written or printed here; :mod:`ulsam_deploy.bench.report` renders and writes the report.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from ulsam_deploy.artifacts import now
from ulsam_deploy.backends.base import Runner, infer_in_chunks
from ulsam_deploy.backends.judge import accuracy, judge, reference_problem, tolerances_for
from ulsam_deploy.bench.latency import TimingTarget, measure_interleaved
from ulsam_deploy.bench.machine import machine_info, versions
from ulsam_deploy.bench.models import ModelSpec, export_in_memory, resolve_model
from ulsam_deploy.bench.options import BenchOptions
from ulsam_deploy.bench.results import BenchReport, CompareRow, LatencyRow, ParityRow, RunnerEntry, artifact_name
from ulsam_deploy.data.sources import ImageSet, load_images, random_images, resolve_preprocess
from ulsam_deploy.errors import BackendUnavailable, UserError
from ulsam_deploy.events import SILENT, Events



def _export_missing_onnx(spec: ModelSpec, options: BenchOptions, events: Events) -> None:
    """A checkpoint benched on ONNX Runtime without an ONNX file gets one from the export pipeline, in memory."""
    if "ort" in options.backends and not spec.onnx and spec.module is not None and options.export_missing_onnx:
        events.emit("export", model=spec.name)
        spec.onnx = [export_in_memory(spec, sizes=options.sizes)]
        spec.notes.append("ONNX exported in memory for the ort backend (export pipeline, not written)")


def _open_runners(spec: ModelSpec, options: BenchOptions, skipped: list[dict], warnings: list[str],
                  events: Events) -> list[RunnerEntry]:
    """One loaded runner per (backend, artifact) the registry's backends open for ``spec``; the rest skipped with
    the reason."""
    from ulsam_deploy.backends.registry import NoArtifact, get

    entries: list[RunnerEntry] = []

    def skip(backend: str, reason: str, artifact: str = "") -> None:
        skipped.append({"model": spec.name, "backend": backend, "artifact": artifact, "reason": reason})
        events.emit("skip", model=spec.name, backend=backend, reason=reason)

    _export_missing_onnx(spec, options, events)
    for name in options.backends:
        backend = get(name)
        reason = backend.missing()
        if reason is not None:
            skip(name, reason)
            continue
        try:
            for runner, artifact in backend.open(spec, options):
                events.emit("load", model=spec.name, backend=runner.label, artifact=artifact)
                try:
                    runner.load()
                except backend.skip_on as exc:
                    skip(runner.label, str(exc), artifact)
                    continue
                for message in getattr(runner, "warnings", []):
                    warnings.append(f"{spec.name} {runner.label}: {message}")
                entries.append(RunnerEntry(spec.name, runner, artifact))
        except NoArtifact as exc:
            skip(name, str(exc))
    return entries


def _pick_reference(entries: list[RunnerEntry], options: BenchOptions, warnings: list[str], model: str) -> RunnerEntry | None:
    if not entries:
        return None
    for entry in entries:
        if entry.runner.name == options.reference and entry.precision == "fp32":
            return entry
    for entry in entries:
        if entry.runner.name == options.reference:
            return entry
    fallback = next((e for e in entries if e.precision == "fp32"), entries[0])
    warnings.append(f"{model}: reference backend '{options.reference}' is not available; parity is measured against "
                    f"{fallback.label} ({fallback.precision}) instead")
    return fallback


def _sizes(specs: list[ModelSpec], options: BenchOptions, warnings: list[str]) -> tuple[int, list[tuple[int, int]]]:
    """(channels, the input (H, W) sizes to run): ``options.sizes``, else the models' common size; a size a model's
    network cannot take (not a multiple of its stride) is refused, one outside its proven range warned about."""
    known = [(s, s.input_info()) for s in specs if s.input_info() is not None]
    if not known:
        raise UserError("Cannot tell the input shape: no checkpoint, sidecar, model spec or static ONNX input "
                        "describes the model; export with 'ulsam-deploy export' (it writes the sidecar) or give the checkpoint.")
    channels = {c for _, (c, _z, _n) in known}
    if len(channels) > 1:
        raise UserError(f"The models take {' and '.join(map(str, sorted(channels)))} input channels; compare models "
                        "with the same input channels.")
    if options.sizes is None:
        shapes = {(c, z) for _, (c, z, _n) in known}
        if len(shapes) > 1:
            listed = ", ".join(f"{c}x{z}x{z}" for c, z in sorted(shapes))
            raise UserError(f"The models take different inputs ({listed}); compare models with the same input size and "
                            "channels, or give --input-size.")
        size = known[0][1][1]
        return channels.pop(), [(size, size)]
    for spec in specs:
        dyn = spec.dynamic
        multiple = getattr(dyn, "multiple_of", None)
        for h, w in options.sizes:
            bad = [v for v in (h, w) if multiple and v % multiple]
            if bad:
                below = bad[0] // multiple * multiple
                near = f"{below} or {below + multiple}" if below else str(multiple)
                raise UserError(f"--input-size {h}x{w}: {bad[0]} is not a multiple of {multiple}, the stride "
                                f"{spec.name}'s network needs; use {near}.")
            if dyn is not None and dyn.height and dyn.width and not (dyn.height[0] <= h <= dyn.height[2]
                                                                    and dyn.width[0] <= w <= dyn.width[2]):
                warnings.append(f"{spec.name}: {h}x{w} is outside {dyn.height[0]}..{dyn.height[2]} x {dyn.width[0]}.."
                                f"{dyn.width[2]}, the range its export proved parity at (bench's own parity covers it)")
    return channels.pop(), list(options.sizes)


def _build_inputs(specs: list[ModelSpec], options: BenchOptions, channels: int,
                  sizes: list[tuple[int, int]]) -> dict[tuple[int, int], ImageSet]:
    """The inputs at each size: seeded random tensors, or the images preprocessed at that size."""
    import dataclasses

    if options.inputs is None:
        return {hw: random_images(options.num_inputs or 16, channels, hw, options.seed) for hw in sizes}
    spec = next(s for s in specs if s.input_info() is not None)
    classes = spec.input_info()[2] if not spec.is_backbone else None
    class_names = spec.class_names if not spec.is_backbone else None
    if class_names is None and classes == 1000 and channels == 3:
        try:
            from ulsam_deploy.data import imagenet_class_names

            class_names = imagenet_class_names()
        except Exception:  # noqa: BLE001 - optional nicety
            class_names = None
    out = {}
    for h, w in sizes:
        base = dataclasses.replace(spec.preprocess, size=h) if spec.preprocess is not None else None
        preprocess = resolve_preprocess(h, channels, base=base, mean=options.mean, std=options.std,
                                        resize=options.resize, crop_pct=options.crop_pct)
        out[(h, w)] = load_images(options.inputs, preprocess, class_names=class_names, num_classes=classes,
                                  label_regex=options.label_regex, limit=options.num_inputs, seed=options.seed)
    return out


def _accepts(runner: Runner, hw: tuple[int, int]) -> bool:
    limits = runner.size_limits()
    return limits is None or all(lo <= v <= hi for v, (lo, hi) in zip(hw, limits))


# ------------------------------------------------------------------------------------- bench

def run_bench(models: Sequence[ModelSpec | str | os.PathLike], options: BenchOptions | None = None, *,
              events: Events = SILENT) -> BenchReport:
    """Parity and interleaved latency of every available backend of every model (see the module doc)."""
    options = options or BenchOptions()
    event = events.emit
    started = time.perf_counter()
    specs = [m if isinstance(m, ModelSpec) else resolve_model(m, seed=options.seed) for m in models]
    if not specs:
        raise UserError("Give at least one model to bench (a checkpoint, an ONNX file, an engine or a spec like mv2+17:1).")
    names = [s.name for s in specs]
    for i, s in enumerate(specs):  # disambiguate equal names (model.onnx from two folders)
        if names.count(s.name) > 1:
            s.name = f"{s.name}#{i + 1}"
    warnings: list[str] = []
    skipped: list[dict] = []

    channels, sizes = _sizes(specs, options, warnings)
    from ulsam_deploy.limits import ACTIVATION_FACTOR, fit_count

    fit_count(max(max(options.batches), options.parity_batch), channels * max(h * w for h, w in sizes) * 4 *
              ACTIVATION_FACTOR, "images per batch", "--batch-sizes")  # before any input or runner exists
    inputs = _build_inputs(specs, options, channels, sizes)
    first = inputs[sizes[0]]
    warnings += first.warnings
    for spec in specs:
        warnings += [f"{spec.name}: {message}" for message in spec.warnings]
    event("inputs", inputs=first, sizes=sizes)

    per_model: dict[str, list[RunnerEntry]] = {}
    try:
        for spec in specs:
            per_model[spec.name] = _open_runners(spec, options, skipped, warnings, events)
        if not any(per_model.values()):
            reasons = "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped[:3])
            raise BackendUnavailable(f"No backend could run here ({reasons}).")

        parity_rows: list[ParityRow] = []
        if options.parity:
            parity_rows = _parity(specs, per_model, inputs, options, warnings, event)

        latency_rows: list[LatencyRow] = []
        if options.latency:
            latency_rows = _latency(per_model, inputs, options, skipped, event)

        runners_info = [{"model": e.model, "label": e.label, "precision": e.precision, "artifact": e.artifact,
                         **e.runner.describe()} for entries in per_model.values() for e in entries]
    finally:
        for entries in per_model.values():
            for entry in entries:
                entry.runner.close()

    compare_rows = _compare(specs, latency_rows) if len(specs) > 1 else []
    if any(row.stats.unstable for row in latency_rows):
        from ulsam_deploy.bench.latency import UNSTABLE_WARNING

        warnings.append(UNSTABLE_WARNING)
    for spec in specs:
        warnings += [f"{spec.name}: {note}" for note in spec.notes if "random weights" in note]
    return BenchReport(
        created=now(), machine=machine_info(), versions=versions(),
        settings=options.to_dict(), inputs={**first.describe(), "sizes": [list(hw) for hw in sizes]},
        models=[s.describe() for s in specs],
        runners=runners_info, skipped=skipped, parity=parity_rows, latency=latency_rows, compare=compare_rows,
        warnings=warnings, seconds=time.perf_counter() - started)


def _output_names(entries: list[RunnerEntry], count: int) -> list[str]:
    for entry in entries:
        names = getattr(entry.runner, "output_names", None)
        if names and len(names) == count:
            return list(names)
    return ["logits"] if count == 1 else [f"output{i}" for i in range(count)]


def _parity(specs, per_model, inputs: dict, options: BenchOptions, warnings, event) -> list[ParityRow]:
    """Every runner on every input at every size, judged against its model's reference runner (the one judge, per
    precision; a backbone's feature maps without top-1), all outputs of all sizes in one verdict per runner."""
    rows = []
    sizes = list(inputs)
    multi_size = len(sizes) > 1
    for spec in specs:
        entries = per_model[spec.name]
        ref = _pick_reference(entries, options, warnings, spec.name)
        if ref is None:
            continue
        outputs: dict = {}
        for entry in entries:
            event("parity", model=spec.name, backend=entry.label, artifact=entry.artifact)
            for hw in sizes:
                if _accepts(entry.runner, hw):
                    outputs[entry.key + (hw,)] = infer_in_chunks(entry.runner, inputs[hw].images, options.parity_batch)
        ref_sizes = [hw for hw in sizes if ref.key + (hw,) in outputs]
        if not ref_sizes:
            warnings.append(f"{spec.name}: the reference {ref.label} takes none of the sizes "
                            f"{', '.join(f'{h}x{w}' for h, w in sizes)}; no parity for this model")
            continue
        first = inputs[ref_sizes[0]]
        labels = first.labels if first.labelled and not spec.is_backbone else None
        ref_first = outputs[ref.key + (ref_sizes[0],)]
        names = _output_names(entries, len(ref_first))
        ref_acc = accuracy(ref_first[0], labels) if labels is not None else None
        facts = ref.describe_artifact()
        ref_outputs = [o for hw in ref_sizes for o in outputs[ref.key + (hw,)]]
        rows.append(ParityRow(spec.name, ref.label, ref.precision, ref.artifact, "reference", None, ref_acc,
                              facts["mode"], facts["int8_target"], reference_problem(ref_outputs)))
        for entry in entries:
            if entry is ref:
                continue
            common = [hw for hw in ref_sizes if entry.key + (hw,) in outputs]
            if not common:
                warnings.append(f"{spec.name} {entry.label} ({artifact_name(entry.artifact)}): takes none of the sizes "
                                f"the reference ran; no parity")
                continue
            refs, cands, labelled = [], [], []
            for hw in common:
                a, b = outputs[ref.key + (hw,)], outputs[entry.key + (hw,)]
                if len(a) != len(b):
                    raise UserError(f"{spec.name}: {artifact_name(entry.artifact)} has {len(b)} outputs but the "
                                    f"reference has {len(a)}; bench variants of one export together.")
                refs += a
                cands += b
                labelled += [f"{hw[0]}x{hw[1]}/{n}" if multi_size else n for n in names]
            verdict = judge(refs, cands, tolerances_for(entry.precision, options.threshold_overrides,
                                                        features=spec.is_backbone),
                            labels=labels, names=labelled, classifier=not spec.is_backbone)
            facts = entry.describe_artifact()
            rows.append(ParityRow(spec.name, entry.label, entry.precision, entry.artifact,
                                  f"{ref.label} ({ref.precision}, {artifact_name(ref.artifact)})", verdict,
                                  verdict.main.accuracy_candidate, facts["mode"], facts["int8_target"]))
    return rows


def _latency(per_model, inputs: dict, options: BenchOptions, skipped, event) -> list[LatencyRow]:
    """For each input size and batch, every runner that takes it, all timed in one interleaved loop."""
    rows = []
    sized = len(inputs) > 1 or options.sizes is not None
    for hw, images in inputs.items():
        for batch in options.batches:
            data = images.batch(batch)
            targets, entries_by_key = [], {}
            for entries in per_model.values():
                for entry in entries:
                    limits = entry.runner.batch_limits()
                    if limits and not limits[0] <= batch <= limits[1]:
                        skipped.append({"model": entry.model, "backend": entry.label, "artifact": entry.artifact,
                                        "reason": f"batch {batch} is outside the model's batch range "
                                                  f"{limits[0]}..{limits[1]}", "batch": batch})
                        continue
                    if not _accepts(entry.runner, hw):
                        (h0, h1), (w0, w1) = entry.runner.size_limits()
                        skipped.append({"model": entry.model, "backend": entry.label, "artifact": entry.artifact,
                                        "reason": f"{hw[0]}x{hw[1]} is outside the sizes it takes ({h0}..{h1} x "
                                                  f"{w0}..{w1})", "batch": batch, "size": list(hw)})
                        continue
                    run, stages = entry.runner.prepare(data)
                    key = entry.key + (batch, hw)
                    entries_by_key[key] = entry
                    targets.append(TimingTarget(key=key, run=run, stages=stages))
            if not targets:
                continue
            event("latency_start", batch=batch, size=hw if sized else None, targets=len(targets), timing=options.timing)
            results = measure_interleaved(targets, options.timing, on_round=lambda r, ts, b=batch: event(
                "latency_round", batch=b, round=r, targets=ts))
            for result in results:
                model, label, precision, artifact, b, size = result.key
                facts = entries_by_key[result.key].describe_artifact()
                rows.append(LatencyRow(model, label, precision, artifact, b, result.stats, result.samples_ms,
                                       result.gpu, result.warmup_iters, facts["mode"], facts["latency_meaningful"],
                                       size if sized else None))
            event("latency_done", batch=batch)
    return rows


def _compare(specs: list[ModelSpec], latency_rows: list[LatencyRow]) -> list[CompareRow]:
    base = specs[0]
    base_macs = base.cost()[0]
    rows = []
    index = {(r.model, r.backend, r.precision, r.batch, r.size): r for r in latency_rows}
    for r in latency_rows:
        if r.model == base.name or not r.meaningful:
            continue
        baseline = index.get((base.name, r.backend, r.precision, r.batch, r.size))
        if baseline is None:
            continue
        spec = next(s for s in specs if s.name == r.model)
        rows.append(CompareRow(r.backend, r.precision, r.batch, r.model, base.name, spec.cost()[0], base_macs,
                               r.stats.median, baseline.stats.median, r.size))
    return rows


__all__ = ["run_bench"]
