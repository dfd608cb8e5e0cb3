"""Parity maths: how far a candidate backend's outputs are from the reference's.

Figures follow Polygraphy's comparator: an element fails when ``absdiff > atol`` AND
``reldiff > rtol``; the minimum tolerance that would pass is reported as ``abs`` OR ``rel``.
Classification agreement (top-1 agreement, top-5 overlap) is what fp16/int8 are judged by.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
    atol: float
    rtol: float
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


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, atol: float = 1e-5, rtol: float = 1e-5) -> Comparison:
    """Compare two ``[N, classes]`` (or any ``[N, ...]``) outputs of the same inputs."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape} vs candidate {cand.shape}")
    absdiff = np.abs(ref - cand)
    with np.errstate(divide="ignore", invalid="ignore"):
        reldiff = np.where(absdiff == 0, 0.0, absdiff / np.abs(ref))
    failing = (absdiff > atol) & (reldiff > rtol)
    n = ref.shape[0] if ref.ndim else 1
    flat_ref, flat_cand = ref.reshape(n, -1), cand.reshape(n, -1)
    norms = np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_cand, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(norms == 0, 1.0, (flat_ref * flat_cand).sum(axis=1) / norms)
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
        atol=float(atol),
        rtol=float(rtol),
        samples=int(n),
    )


# ------------------------------------------------------------------------- thresholds and accuracy

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class ParityThresholds:
    """Pass/fail limits for one precision. ``None`` disables a check.

    Elementwise (Polygraphy's rule): every element must satisfy ``absdiff <= atol OR reldiff <= rtol``.
    fp16/int8 are judged mainly on classification agreement: their elementwise check is off by default.
    """

    atol: float | None = None
    rtol: float | None = None
    min_cosine: float | None = None
    min_top1_agreement: float | None = None
    min_top5_overlap: float | None = None
    max_top1_drop: float | None = None  # accuracy drop vs the reference, only when labels exist

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_THRESHOLDS: dict[str, ParityThresholds] = {
    "fp32": ParityThresholds(atol=1e-4, rtol=1e-3, min_cosine=0.99999, min_top1_agreement=1.0),
    "fp16": ParityThresholds(min_cosine=0.999, min_top1_agreement=0.99),
    "int8": ParityThresholds(min_cosine=0.99, min_top1_agreement=0.95, max_top1_drop=0.01),
}
# reported (never gating) elementwise tolerances for precisions whose gate is agreement
REPORT_TOLERANCE = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 1e-2), "int8": (1e-1, 1e-1)}


def thresholds_for(precision: str, overrides: dict[str, dict[str, float | None]] | None = None) -> ParityThresholds:
    """Defaults for ``precision`` with ``overrides`` applied (keys ``"*"`` for all precisions, or a precision)."""
    base = DEFAULT_THRESHOLDS.get(precision, DEFAULT_THRESHOLDS["fp32"])
    data = base.to_dict()
    for scope in ("*", precision):
        data.update((overrides or {}).get(scope, {}))
    return ParityThresholds(**data)


def parse_threshold_overrides(items: list[str] | None) -> dict[str, dict[str, float | None]]:
    """``["atol=1e-3", "fp16:min_top1_agreement=0.995", "int8:max_top1_drop=none"]`` -> overrides dict."""
    from ulsam_deploy.errors import UserError

    keys = set(ParityThresholds.__dataclass_fields__)
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
        if key not in keys:
            raise UserError(f"--threshold '{item}': unknown key '{key}'; use one of {', '.join(sorted(keys))}.")
        if value.strip().lower() in ("none", "off", ""):
            parsed = None
        else:
            try:
                parsed = float(value)
            except ValueError:
                raise UserError(f"--threshold '{item}': '{value}' is not a number (or 'none' to disable the check).") from None
        out.setdefault(scope, {})[key] = parsed
    return out


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


def judge(comparison: Comparison, thresholds: ParityThresholds, acc: Accuracy | None = None,
          ref_acc: Accuracy | None = None) -> list[str]:
    """The failed checks, each as a short phrase (empty list: passed)."""
    failures = []
    t = thresholds
    if not np.isfinite(comparison.max_abs):
        failures.append("non-finite outputs")
    if t.atol is not None or t.rtol is not None:
        atol = np.inf if t.atol is None else t.atol
        rtol = np.inf if t.rtol is None else t.rtol
        if comparison.atol != atol or comparison.rtol != rtol:
            raise ValueError("the comparison was computed with other tolerances than the thresholds")
        if comparison.pass_rate < 1.0:
            failures.append(f"{1 - comparison.pass_rate:.2%} of elements beyond atol {atol:g} and rtol {rtol:g} "
                            f"(max abs {comparison.max_abs:.3g}, max rel {comparison.max_rel:.3g})")
    if t.min_cosine is not None and not comparison.cosine >= t.min_cosine:
        failures.append(f"cosine {comparison.cosine:.6f} < {t.min_cosine:g}")
    if t.min_top1_agreement is not None and comparison.top1_agreement < t.min_top1_agreement:
        failures.append(f"top-1 agreement {comparison.top1_agreement:.2%} < {t.min_top1_agreement:.2%}")
    if t.min_top5_overlap is not None and comparison.top5_overlap < t.min_top5_overlap:
        failures.append(f"top-5 overlap {comparison.top5_overlap:.2%} < {t.min_top5_overlap:.2%}")
    if t.max_top1_drop is not None and acc is not None and ref_acc is not None:
        drop = ref_acc.top1 - acc.top1
        if drop > t.max_top1_drop + 1e-12:
            failures.append(f"top-1 accuracy {drop:.2%} below the reference (allowed {t.max_top1_drop:.2%})")
    return failures


def compare_with_thresholds(reference: np.ndarray, candidate: np.ndarray, precision: str,
                            thresholds: ParityThresholds) -> Comparison:
    """:func:`compare_outputs` with the elementwise tolerances that ``thresholds`` (or the report defaults) set."""
    if thresholds.atol is not None or thresholds.rtol is not None:
        atol = np.inf if thresholds.atol is None else thresholds.atol
        rtol = np.inf if thresholds.rtol is None else thresholds.rtol
    else:
        atol, rtol = REPORT_TOLERANCE.get(precision, REPORT_TOLERANCE["fp32"])
    return compare_outputs(reference, candidate, atol=atol, rtol=rtol)
