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
