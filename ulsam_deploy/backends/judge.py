"""The one judge: outputs of a reference and a candidate in, a verdict out.

Every gate calls :func:`judge` (export, fuse, convert, bench, demo), with the tolerances of
:func:`tolerances_for` for the artifact's precision (flags override), so one artifact on one set of
inputs gets one verdict wherever it is judged. The judge never knows which gate is asking.

Figures follow Polygraphy's comparator: an element fails when ``absdiff > atol`` AND ``reldiff > rtol``
(a missing ``rtol`` makes it an absolute test); the minimum tolerance that would pass is reported.
Non-finite values (NaN/Inf) in either output always fail, as Polygraphy's output validation does.
Classifier outputs (``[N, classes]``) are also judged on top-1 agreement, top-5 overlap and, with
labels, on the top-1 accuracy lost; fp16/int8 are judged on those rather than element-wise. A backbone's
feature maps have no classes: each is judged on its own figures (``tolerances_for(..., features=True)``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class Comparison:
    max_abs: float
    mean_abs: float
    median_abs: float
    max_rel: float
    mean_rel: float
    cosine: float
    top1_agreement: float  # fraction of samples whose argmax matches
    top5_overlap: float  # mean |top5(ref) & top5(cand)| / 5
    pass_rate: float  # fraction of elements within (atol OR rtol)
    atol: float | None
    rtol: float | None
    samples: int

    @property
    def min_required_atol(self) -> float:
        return self.max_abs

    @property
    def min_required_rtol(self) -> float:
        return self.max_rel

    @property
    def passed_elementwise(self) -> bool:
        return self.pass_rate == 1.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(min_required_atol=self.min_required_atol, min_required_rtol=self.min_required_rtol,
                    passed_elementwise=self.passed_elementwise)
        return {k: (float(v) if isinstance(v, (np.floating,)) else v) for k, v in data.items()}


def topk_indices(logits: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[-1])
    part = np.argpartition(-logits, k - 1, axis=-1)[..., :k]
    order = np.take_along_axis(logits, part, axis=-1).argsort(axis=-1)[..., ::-1]
    return np.take_along_axis(part, order, axis=-1)


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, atol: float | None = 1e-5,
                    rtol: float | None = 1e-5) -> Comparison:
    """Compare two ``[N, classes]`` (or any ``[N, ...]``) outputs of the same inputs (``None``: that test is off)."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape} vs candidate {cand.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        absdiff = np.abs(ref - cand)
        absdiff = np.where(np.isfinite(ref) & np.isfinite(cand), absdiff, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        reldiff = np.where(absdiff == 0, 0.0, absdiff / np.abs(ref))
    if atol is not None and rtol is not None:
        failing = (absdiff > atol) & (reldiff > rtol)
    elif atol is not None:
        failing = absdiff > atol
    elif rtol is not None:
        failing = reldiff > rtol
    else:
        failing = ~np.isfinite(absdiff)
    n = ref.shape[0] if ref.ndim else 1
    flat_ref, flat_cand = ref.reshape(n, -1), cand.reshape(n, -1)
    norms = np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_cand, axis=1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cos = np.where(norms == 0, 1.0, (flat_ref * flat_cand).sum(axis=1) / norms)
    cos = np.where(np.isfinite(cos), cos, np.nan)
    top1 = float(np.mean(flat_ref.argmax(axis=1) == flat_cand.argmax(axis=1)))
    k = min(5, flat_ref.shape[1])
    t_ref, t_cand = topk_indices(flat_ref, k), topk_indices(flat_cand, k)
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(t_ref, t_cand)])
    return Comparison(
        max_abs=float(absdiff.max(initial=0.0)),
        mean_abs=float(absdiff.mean()) if absdiff.size else 0.0,
        median_abs=float(np.median(absdiff)) if absdiff.size else 0.0,
        max_rel=float(reldiff.max(initial=0.0)),
        mean_rel=float(reldiff.mean()) if reldiff.size else 0.0,
        cosine=float(cos.mean()),
        top1_agreement=top1,
        top5_overlap=float(overlap),
        pass_rate=float(1.0 - failing.mean()) if failing.size else 1.0,
        atol=None if atol is None else float(atol),
        rtol=None if rtol is None else float(rtol),
        samples=int(n),
    )


# ------------------------------------------------------------------------------------ tolerances

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Tolerances:
    """Pass/fail limits. ``None`` disables a check.

    Element-wise (Polygraphy's rule): every element must satisfy ``absdiff <= atol OR reldiff <= rtol``.
    ``max_top1_drop`` is the top-1 accuracy (a fraction) a candidate may lose against the reference on
    labelled data; on unlabelled data it bounds the disagreement instead (``agreement >= 1 - drop``
    bounds the accuracy change by the same amount).
    """

    atol: float | None = None
    rtol: float | None = None
    min_cosine: float | None = None
    min_top1_agreement: float | None = None
    min_top5_overlap: float | None = None
    max_top1_drop: float | None = None

    @property
    def elementwise(self) -> bool:
        return self.atol is not None or self.rtol is not None

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_TOLERANCES: dict[str, Tolerances] = {
    "fp32": Tolerances(atol=1e-4, rtol=1e-3, min_cosine=0.99999, min_top1_agreement=1.0),
    "fp16": Tolerances(min_cosine=0.999, min_top1_agreement=0.995),
    "int8": Tolerances(min_cosine=0.99, min_top1_agreement=0.95, max_top1_drop=0.01),
}
# reported (never gating) element-wise tolerances where a precision is judged on agreement
REPORT_TOLERANCE = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 1e-2), "int8": (1e-1, 1e-1)}
KEYS = tuple(Tolerances.__dataclass_fields__)


CLASS_KEYS = ("min_top1_agreement", "min_top5_overlap", "max_top1_drop")


def tolerances_for(precision: str, overrides: dict[str, dict[str, float | None]] | None = None, *,
                   features: bool = False) -> Tolerances:
    """Defaults for ``precision`` with ``overrides`` applied (scope ``"*"`` for every precision, or a precision).

    ``features``: the outputs are a backbone's feature maps, which have no classes, so the top-1/top-5 checks are
    off (overrides of them too) and each map is judged on the precision's element-wise limits (fp32) and cosine
    (every precision) alone; the element-wise figures of fp16/int8 are reported as the tolerance they would need.
    """
    data = DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp32"]).to_dict()
    for scope in ("*", precision):
        data.update((overrides or {}).get(scope, {}))
    if features:
        data.update(dict.fromkeys(CLASS_KEYS))
    return Tolerances(**data)


def parse_tolerance_overrides(items: list[str] | None) -> dict[str, dict[str, float | None]]:
    """``["atol=1e-3", "fp16:min_top1_agreement=0.995", "int8:max_top1_drop=none"]`` -> overrides dict."""
    from ulsam_deploy.errors import UserError

    out: dict[str, dict[str, float | None]] = {}
    for item in items or []:
        text = item.strip()
        scope = "*"
        if "=" not in text:
            raise UserError(f"--threshold '{item}' is not KEY=VALUE or PRECISION:KEY=VALUE (e.g. fp16:min_top1_agreement=0.995).")
        lhs, value = text.split("=", 1)
        if ":" in lhs:
            scope, lhs = lhs.split(":", 1)
            if scope not in PRECISIONS:
                raise UserError(f"--threshold '{item}': unknown precision '{scope}'; use one of {', '.join(PRECISIONS)}.")
        key = lhs.strip().replace("-", "_")
        if key not in KEYS:
            raise UserError(f"--threshold '{item}': unknown key '{key}'; use one of {', '.join(sorted(KEYS))}.")
        if value.strip().lower() in ("none", "off", ""):
            parsed = None
        else:
            try:
                parsed = float(value)
            except ValueError:
                raise UserError(f"--threshold '{item}': '{value}' is not a number (or 'none' to disable the check).") from None
            if not np.isfinite(parsed) or parsed < 0:
                raise UserError(f"--threshold '{item}': the value must be a finite number >= 0.")
        out.setdefault(scope, {})[key] = parsed
    return out


# -------------------------------------------------------------------------------------- accuracy

@dataclass
class Accuracy:
    top1: float
    top5: float
    samples: int

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> Accuracy | None:
    """Top-1 / top-5 accuracy over samples with a known label (label >= 0); None when there are none."""
    labels = np.asarray(labels)
    known = labels >= 0
    if not known.any():
        return None
    flat = np.asarray(logits, dtype=np.float64).reshape(len(labels), -1)[known]
    truth = labels[known]
    k = min(5, flat.shape[1])
    top = topk_indices(flat, k)
    return Accuracy(top1=float(np.mean(top[:, 0] == truth)), top5=float(np.mean((top == truth[:, None]).any(axis=1))),
                    samples=int(known.sum()))


# ---------------------------------------------------------------------------------------- verdict

@dataclass
class OutputVerdict:
    """The figures of one output (classifier logits, or one feature map of a backbone)."""

    name: str
    comparison: Comparison
    classifier: bool
    accuracy_reference: Accuracy | None = None
    accuracy_candidate: Accuracy | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "classifier": self.classifier, "comparison": self.comparison.to_dict(),
                "accuracy_reference": self.accuracy_reference.to_dict() if self.accuracy_reference else None,
                "accuracy_candidate": self.accuracy_candidate.to_dict() if self.accuracy_candidate else None}


@dataclass
class Verdict:
    """The judge's answer: passed or not, each failed check as a phrase, and every figure."""

    tolerances: Tolerances
    outputs: list[OutputVerdict]
    failures: list[str] = field(default_factory=list)
    reference_problem: str | None = None  # why the reference's own outputs prove nothing (see reference_problem())

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def main(self) -> OutputVerdict:
        return self.outputs[0]

    @property
    def comparison(self) -> Comparison:
        return self.main.comparison

    @property
    def max_abs(self) -> float:
        return max((o.comparison.max_abs for o in self.outputs), default=0.0)

    @property
    def samples(self) -> int:
        return self.main.comparison.samples

    def accuracy_drop_points(self) -> float | None:
        ref, cand = self.main.accuracy_reference, self.main.accuracy_candidate
        return None if ref is None or cand is None else round((ref.top1 - cand.top1) * 100, 4)

    def sentence(self) -> str:
        """The failed checks in one clause, e.g. 'top-1 agreement 97.10% < 99.50%; cosine ...'."""
        return "; ".join(self.failures[:3]) + (f" (and {len(self.failures) - 3} more)" if len(self.failures) > 3 else "")

    def to_dict(self) -> dict:
        return {"passed": self.passed, "failures": list(self.failures), "tolerances": self.tolerances.to_dict(),
                "outputs": [o.to_dict() for o in self.outputs], "max_abs": self.max_abs,
                "accuracy_drop_points": self.accuracy_drop_points()}


def _as_list(outputs) -> list[np.ndarray]:
    return [outputs] if isinstance(outputs, np.ndarray) else list(outputs)


NEAR_ZERO = 1e-6  # largest |output| below which a float model's outputs carry no signal (fresh BatchNorm: 1e-9)


def reference_problem(outputs, names: list[str] | None = None) -> str | None:
    """Why a reference's outputs cannot prove parity, as a phrase, or None: non-finite values, every value near
    zero (an untrained network whose BatchNorm statistics are still the defaults shrinks activations to ~1e-9),
    or the same output for every input of a batch. Comparing such outputs passes whatever the candidate does."""
    arrays = [np.asarray(o) for o in _as_list(outputs)]
    names = list(names or [f"output{i}" for i in range(len(arrays))])
    for name, a in zip(names, arrays):
        where = f" ('{name}')" if len(arrays) > 1 else ""
        if a.size and not np.isfinite(a).all():
            return f"non-finite values (NaN or Inf){where}"
    finite = [a.astype(np.float64) for a in arrays if a.size]
    if finite and max(float(np.abs(a).max()) for a in finite) < NEAR_ZERO:
        return f"all near zero (largest |value| below {NEAR_ZERO:g})"
    batched = [a for a in finite if a.ndim >= 2 and a.shape[0] >= 2]
    if batched and all(float(np.abs(a - a[:1]).max()) <= NEAR_ZERO * max(1.0, float(np.abs(a).max()))
                       for a in batched):
        return "the same for every input of a batch"
    return None


REFERENCE_FIX = ("check its weights for NaN or Inf, give it BatchNorm statistics from real data (train it, or run a "
                 "few batches in train mode) and check --mean/--std")


def judge(reference, candidate, tolerances: Tolerances, labels: np.ndarray | None = None,
          names: list[str] | None = None, classifier: bool | None = None) -> Verdict:
    """Judge ``candidate`` against ``reference`` (one array or a list, one per output, in the same order).

    ``classifier`` (default: a single 2-D output) turns on top-1/top-5 checks and, with ``labels``
    (``-1`` for unknown), accuracy. Shapes that differ or values that are not finite fail.
    """
    refs, cands = _as_list(reference), _as_list(candidate)
    names = list(names or [f"output{i}" for i in range(len(refs))])
    failures: list[str] = []
    if len(refs) != len(cands):
        raise ValueError(f"{len(refs)} reference outputs but {len(cands)} candidate outputs")
    if classifier is None:
        classifier = len(refs) == 1 and np.asarray(refs[0]).ndim == 2
    t = tolerances
    atol, rtol = (t.atol, t.rtol) if t.elementwise else (None, None)
    results: list[OutputVerdict] = []
    problem = reference_problem(refs, names)
    if problem is not None:
        failures.append(f"the reference's own outputs are {problem}, so no comparison with them proves anything")
    for name, ref, cand in zip(names, refs, cands):
        ref, cand = np.asarray(ref), np.asarray(cand)
        prefix = f"{name}: " if len(refs) > 1 else ""
        if ref.shape != cand.shape:
            failures.append(f"{prefix}output shape {list(cand.shape)} differs from the reference's {list(ref.shape)}")
            continue
        if t.elementwise:
            comparison = compare_outputs(ref, cand, atol=atol, rtol=rtol)
        else:
            comparison = compare_outputs(ref, cand, *REPORT_TOLERANCE["fp16"])
        entry = OutputVerdict(name, comparison, bool(classifier))
        results.append(entry)
        finite_ref, finite_cand = bool(np.isfinite(ref).all()), bool(np.isfinite(cand).all())
        if not (finite_ref and finite_cand):
            if not finite_cand:
                failures.append(f"{prefix}non-finite values (NaN or Inf) in the candidate's outputs")
            continue
        if t.elementwise and comparison.pass_rate < 1.0:
            bound = " and ".join(f"{k} {v:g}" for k, v in (("atol", t.atol), ("rtol", t.rtol)) if v is not None)
            failures.append(f"{prefix}{1 - comparison.pass_rate:.2%} of elements beyond {bound} (max abs "
                            f"{comparison.max_abs:.3g}, max rel {comparison.max_rel:.3g})")
        if t.min_cosine is not None and not comparison.cosine >= t.min_cosine:
            failures.append(f"{prefix}cosine {comparison.cosine:.6f} < {t.min_cosine:g}")
        if not classifier:
            continue
        if t.min_top1_agreement is not None and comparison.top1_agreement < t.min_top1_agreement:
            failures.append(f"{prefix}top-1 agreement {comparison.top1_agreement:.2%} < {t.min_top1_agreement:.2%}")
        if t.min_top5_overlap is not None and comparison.top5_overlap < t.min_top5_overlap:
            failures.append(f"{prefix}top-5 overlap {comparison.top5_overlap:.2%} < {t.min_top5_overlap:.2%}")
        if labels is not None:
            entry.accuracy_reference = accuracy(ref, labels)
            entry.accuracy_candidate = accuracy(cand, labels)
        if t.max_top1_drop is not None:
            if entry.accuracy_reference is not None and entry.accuracy_candidate is not None:
                drop = entry.accuracy_reference.top1 - entry.accuracy_candidate.top1
                if drop > t.max_top1_drop + 1e-12:
                    failures.append(f"{prefix}top-1 accuracy {entry.accuracy_candidate.top1:.2%} is "
                                    f"{drop * 100:.2f} points "
                                    f"below the reference's {entry.accuracy_reference.top1:.2%} (allowed "
                                    f"{t.max_top1_drop * 100:g})")
            elif comparison.top1_agreement < 1.0 - t.max_top1_drop - 1e-12:
                failures.append(f"{prefix}top-1 agreement {comparison.top1_agreement:.2%} on unlabelled inputs < "
                                f"{1.0 - t.max_top1_drop:.2%} (which bounds the accuracy change by "
                                f"{t.max_top1_drop * 100:g} points)")
    return Verdict(t, results, failures, problem)


__all__ = ["Accuracy", "CLASS_KEYS", "Comparison", "DEFAULT_TOLERANCES", "OutputVerdict", "PRECISIONS", "Tolerances",
           "Verdict",
           "REFERENCE_FIX", "accuracy", "compare_outputs", "judge", "reference_problem", "parse_tolerance_overrides", "tolerances_for", "topk_indices"]
