"""bench's maths on constructed data: parity figures, thresholds, accuracy, percentiles, interleaving."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ulsam_deploy.backends.judge import (DEFAULT_TOLERANCES, Tolerances, accuracy, compare_outputs, judge,
                                         parse_tolerance_overrides, tolerances_for)
from ulsam_deploy.errors import UserError
from ulsam_deploy.bench.latency import (LatencyStats, TimingConfig, TimingTarget, measure_interleaved, median, percentile,
                                  throughput)

# ------------------------------------------------------------------------------------ parity


def test_known_difference_gives_known_figures():
    ref = np.arange(40, dtype=np.float32).reshape(4, 10) + 1.0  # all positive, argmax = last column
    cand = ref.copy()
    cand[2, 3] += 0.5  # one element off by 0.5 (relative 0.5 / 24)
    c = compare_outputs(ref, cand, atol=0.1, rtol=0.01)
    assert c.max_abs == pytest.approx(0.5)
    assert c.mean_abs == pytest.approx(0.5 / 40)
    assert c.median_abs == 0.0
    assert c.max_rel == pytest.approx(0.5 / 24)
    assert c.min_required_atol == pytest.approx(0.5) and c.min_required_rtol == pytest.approx(0.5 / 24)
    assert c.pass_rate == pytest.approx(39 / 40)  # fails both atol 0.1 and rtol 0.01
    assert c.top1_agreement == 1.0 and c.top5_overlap == 1.0
    # the same element passes once either tolerance covers it (Polygraphy: fail only if abs AND rel exceed)
    assert compare_outputs(ref, cand, atol=0.6, rtol=0.0).pass_rate == 1.0
    assert compare_outputs(ref, cand, atol=0.0, rtol=0.03).pass_rate == 1.0


def test_top1_agreement_top5_overlap_and_cosine():
    ref = np.tile(np.arange(10, dtype=np.float64), (4, 1))  # top-5 = 9,8,7,6,5
    cand = ref.copy()
    cand[0, 0] = 100.0  # sample 0: argmax moves to 0, top-5 becomes 0,9,8,7,6 (4 of 5 shared)
    c = compare_outputs(ref, cand)
    assert c.top1_agreement == pytest.approx(0.75)
    assert c.top5_overlap == pytest.approx((4 / 5 + 1 + 1 + 1) / 4)
    ortho = compare_outputs(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))
    assert ortho.cosine == pytest.approx(0.0)
    scaled = compare_outputs(np.array([[1.0, 2.0, 3.0]]), np.array([[2.0, 4.0, 6.0]]))
    assert scaled.cosine == pytest.approx(1.0) and scaled.max_abs == pytest.approx(3.0)


def test_accuracy_counts_only_labelled_samples():
    logits = np.array([[0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0], [0, 0, 9, 0, 0, 0, 0]], dtype=np.float32)
    acc = accuracy(logits, np.array([6, 3, -1]))
    assert acc.samples == 2
    assert acc.top1 == pytest.approx(0.5)  # sample 0 right, sample 1 wrong (its argmax is 0)
    assert acc.top5 == pytest.approx(1.0)  # class 3 is within sample 1's top-5 (0,1,2,3,4)
    assert accuracy(logits, np.array([-1, -1, -1])) is None


def test_fp32_defaults_are_tight_and_fail_a_small_error():
    ref = np.random.default_rng(0).standard_normal((8, 10))
    t = tolerances_for("fp32")
    assert judge(ref, ref + 1e-6, t).passed
    bad = judge(ref, ref + 1e-2, t)
    assert not bad.passed and "beyond atol" in bad.failures[0]


def test_fp16_judged_on_agreement_not_elementwise():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((64, 100)) * 5
    noisy = ref + rng.standard_normal(ref.shape) * 2e-3  # fp16-sized noise: elementwise fp32 check would fail
    t16 = tolerances_for("fp16")
    assert t16.atol is None and t16.min_top1_agreement == DEFAULT_TOLERANCES["fp16"].min_top1_agreement
    assert judge(ref, noisy, t16).passed
    assert not judge(ref, noisy, tolerances_for("fp32")).passed
    flipped = ref.copy()
    flipped[:4] = -flipped[:4]  # 4 of 64 samples change their answer: 93.75 % agreement
    assert any("top-1 agreement 93.75%" in f for f in judge(ref, flipped, t16).failures)


def test_int8_accuracy_drop_check_uses_labels_or_bounds_disagreement():
    t = tolerances_for("int8")
    labels = np.arange(4)
    good, worse = np.eye(4) * 5, np.eye(4)[[0, 1, 2, 0]] * 5
    verdict = judge(good, worse, t, labels=labels)
    assert any("top-1 accuracy 75.00% is 25.00 points below the reference's 100.00%" in f for f in verdict.failures)
    assert verdict.accuracy_drop_points() == pytest.approx(25.0)
    unlabelled = judge(good, worse, t)
    assert any("on unlabelled inputs < 99.00%" in f for f in unlabelled.failures)
    big = np.tile(np.eye(4), (50, 1)) * 5  # 200 samples, 1 flipped: 99.5 % agreement, within the 1-point bound
    flipped = big.copy()
    flipped[0] = np.roll(flipped[0], 1)
    assert judge(big, flipped, t).passed


def test_absolute_tolerance_alone_is_a_max_abs_test():
    """export and fuse judge with ``atol`` only: any element beyond it fails, whatever its relative size."""
    ref = np.array([[1000.0, 1001.0, 999.0], [998.0, 1000.5, 1002.0]])
    cand = ref + 0.01  # relative 1e-5, absolute 1e-2
    assert not judge(ref, cand, Tolerances(atol=1e-3), classifier=False).passed
    assert judge(ref, cand, Tolerances(atol=0.02), classifier=False).passed


def test_several_outputs_are_judged_each_and_shapes_must_match():
    a, b = np.arange(72.0).reshape(2, 4, 3, 3), np.arange(64.0).reshape(2, 8, 2, 2)
    verdict = judge([a, b], [a, b + 1.0], Tolerances(atol=1e-3), names=["feat_s8", "feat_s16"])
    assert not verdict.passed and verdict.failures[0].startswith("feat_s16:")
    assert verdict.outputs[0].comparison.max_abs == 0.0 and not verdict.outputs[0].classifier
    shape = judge([a], [a[:, :2]], Tolerances(atol=1.0))
    assert "output shape" in shape.failures[0]


def test_threshold_overrides_parse_and_apply():
    overrides = parse_tolerance_overrides(["atol=1e-3", "fp16:min_top1_agreement=0.995", "int8:max-top1-drop=none"])
    assert tolerances_for("fp32", overrides).atol == 1e-3
    assert tolerances_for("fp16", overrides).atol == 1e-3  # '*' applies to every precision
    assert tolerances_for("fp16", overrides).min_top1_agreement == 0.995
    assert tolerances_for("fp32", overrides).min_top1_agreement == 1.0
    assert tolerances_for("int8", overrides).max_top1_drop is None
    for bad, words in (("atol", "KEY=VALUE"), ("fp64:atol=1", "unknown precision"), ("speed=3", "unknown key"),
                       ("atol=fast", "not a number"), ("atol=-1", "finite number >= 0"), ("atol=nan", "finite")):
        with pytest.raises(UserError, match=words):
            parse_tolerance_overrides([bad])


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("where", ["candidate", "reference"])
def test_non_finite_outputs_never_pass(precision, where):
    ref = np.random.default_rng(2).standard_normal((4, 10))
    cand = ref.copy()
    (cand if where == "candidate" else ref)[0, 0] = np.nan
    verdict = judge(ref, cand, tolerances_for(precision), labels=np.arange(4))
    assert not verdict.passed and any("non-finite" in f for f in verdict.failures)
    inf = ref.copy()
    inf[1, 2] = np.inf
    assert not judge(ref if where == "candidate" else inf, inf if where == "candidate" else ref,
                     Tolerances(atol=1.0), classifier=False).passed
    off = Tolerances()  # every check disabled: NaN still fails
    assert not judge(ref, cand, off).passed


# ---------------------------------------------------------------------------------- latency


def _trtexec_percentile(values, p):
    """trtexec's findPercentile (sorted[max(n - 1 - int((1 - p/100) n), 0)]) in exact arithmetic; the C++
    computes it in float, which can round (1 - 0.99) * 100 below 1 and pick the next sample at exact ranks."""
    from fractions import Fraction

    n = len(values)
    exclude = int((1 - Fraction(p) / 100) * n)
    return sorted(values)[max(n - 1 - exclude, 0)]


def test_percentiles_nearest_rank_known_values():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 90) == 90 and percentile(values, 95) == 95 and percentile(values, 99) == 99
    assert percentile(values, 100) == 100 and percentile(values, 0) == 1
    ten = list(range(1, 11))
    assert percentile(ten, 90) == 9 and percentile(ten, 95) == 10 and percentile(ten, 99) == 10
    assert percentile([7.0], 99) == 7.0
    assert median([1, 2, 3]) == 2 and median([1, 2, 3, 10]) == 2.5
    assert math.isinf(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 19, 20, 99, 100, 101, 333, 1000])
@pytest.mark.parametrize("p", [50, 90, 95, 99])
def test_percentile_matches_trtexec(n, p):
    values = list(np.random.default_rng(n).random(n))
    assert percentile(sorted(values), p) == pytest.approx(_trtexec_percentile(values, p))


def test_latency_stats_and_unstable_flag():
    steady = LatencyStats.from_samples([10.0] * 20)
    assert steady.cv == 0 and not steady.unstable and steady.median == 10.0
    s = LatencyStats.from_samples([4.0, 2.0])  # unsorted input
    assert (s.min, s.max, s.mean, s.median, s.std) == (2.0, 4.0, 3.0, 3.0, 1.0)
    assert s.cv == pytest.approx(1 / 3) and s.unstable
    edge = LatencyStats.from_samples([100.0, 105.0])  # std 2.5, mean 102.5: CV 2.44 % -> stable
    assert not edge.unstable
    assert LatencyStats.from_samples([100.0, 106.0]).unstable  # CV 2.91 %
    qps, ips = throughput(LatencyStats.from_samples([4.0, 4.0]), batch=8)
    assert qps == pytest.approx(250.0) and ips == pytest.approx(2000.0)
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])


def test_interleaving_rotates_and_meets_minimums():
    import time

    calls = []

    def make(name):
        # each call outlasts a block (1 ms at least), so a block is: one unrecorded switch call + one timed call
        return TimingTarget(key=name, run=lambda: (calls.append(name), time.sleep(0.002)), stages=lambda: {"compute": 1.0})

    targets = [make("a"), make("b"), make("c")]
    config = TimingConfig(warmup_s=0.0, min_iters=5, min_seconds=0.0, block_s=1e-9)
    results = measure_interleaved(targets, config)
    assert [r.key for r in results] == ["a", "b", "c"]
    for r in results:
        assert r.stats.count >= 5 and r.gpu["compute"].median == 1.0 and r.warmup_iters == 1
    timed = calls[3:]  # after one warm-up call each
    # every block: one unrecorded switch call + at least one timed call; round r starts at target r % 3
    firsts = [timed[i] for i in range(0, 4 * 3 * 2, 2 * 3)]  # first target of each round (blocks of 2 calls)
    assert firsts[:3] == ["a", "b", "c"]


def test_interleaving_gives_each_target_its_seconds():
    import time

    targets = [TimingTarget(key=k, run=(lambda d=d: time.sleep(d))) for k, d in (("fast", 0.0005), ("slow", 0.003))]
    results = measure_interleaved(targets, TimingConfig(warmup_s=0.01, min_iters=3, min_seconds=0.06, block_s=0.02))
    fast, slow = results
    assert fast.stats.count > slow.stats.count >= 3
    assert fast.stats.median < slow.stats.median


def test_timing_config_validates():
    with pytest.raises(UserError, match="--iterations"):
        TimingConfig(min_iters=0)
    with pytest.raises(UserError, match="--warmup"):
        TimingConfig(warmup_s=-1)
