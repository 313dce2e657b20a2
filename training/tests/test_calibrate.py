"""Calibration tests (numpy only)."""

import numpy as np

from edgekd_train.calibrate import apply_thresholds, calibrate, ece, fit_temperature, nll, prefix_threshold, softmax

NAMES = [f"k{i}" for i in range(5)]


def toy(n=6000, k=5, seed=0, sharpness=6.0):
    """Overconfident toy logits: ~85 % accurate but scaled so confidences are near 1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 2.5
    return logits * sharpness, y


def test_temperature_lowers_nll():
    logits, y = toy()
    t = fit_temperature(logits, y)
    assert t > 1.5  # overconfident -> T > 1
    assert nll(logits, y, t) < nll(logits, y) - 0.1
    # It is a minimum: nearby temperatures are no better.
    assert nll(logits, y, t) <= min(nll(logits, y, t * 1.05), nll(logits, y, t / 1.05))


def test_ece_improves():
    logits, y = toy()
    t = fit_temperature(logits, y)
    assert ece(softmax(logits, t), y) < ece(softmax(logits), y)


def test_ece_perfect_and_worst():
    y = np.array([0, 1, 0, 1])
    p = np.eye(2)[y]
    assert ece(p, y) == 0.0
    assert ece(np.eye(2)[1 - y], y) == 1.0


def test_thresholds_meet_target_on_calibration_set():
    logits, y = toy(n=20000, sharpness=1.0)
    target = 0.01
    cal = calibrate(logits, y, NAMES, target=target, min_count=100)
    p = softmax(logits, cal.temperature)
    pred, conf = p.argmax(1), p.max(1)
    assert cal.default is not None
    for k, name in enumerate(NAMES):
        thr = cal.per_class[name]
        assert thr is not None
        m = (pred == k) & (conf >= thr)
        assert m.sum() >= 100
        assert (pred[m] != y[m]).mean() <= target
        # Longest prefix: accepting the next lower-confidence sample would break the target
        # or there is none left.
    acc = apply_thresholds(p, NAMES, cal.per_class, cal.default)
    assert abs(acc.mean() - cal.coverage) < 1e-12
    assert cal.error_among_accepted <= target
    assert 0 < cal.coverage < 1
    card = cal.to_card()
    assert card["target"]["max_error_among_accepted"] == target
    assert card["target"]["coverage_on_calibration_set"] == cal.coverage


def test_prefix_is_longest():
    # 300 correct at high confidence, then alternating errors.
    conf = np.linspace(1.0, 0.5, 400)
    correct = np.ones(400, bool)
    correct[300::2] = False
    thr, why = prefix_threshold(conf, correct, target=0.01, min_count=100)
    assert why is None
    n_acc = (conf >= thr).sum()
    errs = (~correct[conf >= thr]).sum()
    assert errs / n_acc <= 0.01
    # One more sample would exceed it.
    assert (~correct[: n_acc + 1]).sum() / (n_acc + 1) > 0.01 or n_acc == 400


def test_ties_are_not_split():
    conf = np.array([0.9] * 150 + [0.8] * 50)
    correct = np.ones(200, bool)
    correct[10] = False  # one error among the 0.9s: 1/150 ok; 2 errors among all 200 would be 1 %
    correct[160] = False
    correct[170] = False
    thr, _ = prefix_threshold(conf, correct, target=0.01, min_count=100)
    assert thr == 0.9


def test_too_few_samples_gives_null_and_note():
    logits, y = toy(n=20000, sharpness=1.0)
    # Make class 4 rare in predictions: push its logit down except on a few samples.
    logits[:, 4] -= 50
    keep = np.nonzero(y == 4)[0][:30]
    logits[keep, 4] += 100
    cal = calibrate(logits, y, NAMES, target=0.01, min_count=100)
    assert cal.per_class["k4"] is None
    assert any(n.startswith("k4:") and "fewer than the minimum 100" in n for n in cal.notes)
    assert all(cal.per_class[n] is not None for n in NAMES[:4])
    p = softmax(logits, cal.temperature)
    acc = apply_thresholds(p, NAMES, cal.per_class, cal.default)
    assert not acc[p.argmax(1) == 4].any()


def test_unreachable_target_gives_null_and_note():
    rng = np.random.default_rng(1)
    n = 2000
    y = rng.integers(0, 5, n)
    logits = rng.normal(0, 1, (n, 5))  # chance level: no prefix reaches 1 % error
    cal = calibrate(logits, y, NAMES, target=0.01, min_count=100)
    assert cal.default is None
    assert all(v is None for v in cal.per_class.values())
    assert cal.coverage == 0.0 and cal.error_among_accepted is None
    assert any(n.startswith("default threshold is null") for n in cal.notes)
    assert len(cal.notes) == 6


def test_binomial_cdf_matches_the_exact_sum():
    from math import comb

    from edgekd_train.calibrate import binomial_cdf

    for k, n, p in [(0, 300, 0.01), (1, 10, 0.5), (3, 500, 0.01), (12, 2000, 0.004), (5, 5, 0.3)]:
        exact = sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
        assert abs(binomial_cdf(k, n, p) - exact) <= 1e-9 * exact, (k, n, p)


def test_the_bound_is_clopper_pearson():
    from edgekd_train.calibrate import error_bound_holds

    # 0 errors in n: the one-sided 95 % upper bound is 1 - 0.05^(1/n), <= 1 % from n = 299 on.
    assert not error_bound_holds(0, 298, 0.01, 0.95)
    assert error_bound_holds(0, 299, 0.01, 0.95)
    # 1 error in 100 is exactly the target: the point test passes, no bound above 0 does.
    assert not error_bound_holds(1, 100, 0.01, 0.5)


def test_a_confidence_bound_holds_the_target_out_of_sample_where_the_point_estimate_does_not():
    """Thresholds fit on one draw and checked on fresh draws of the same toy: the point
    estimate sits at the target on its own data and overshoots on new data about half the
    time; the 90 % bound is stricter, covers less and overshoots rarely."""
    cal_logits, cal_y = toy(n=6000, seed=1, sharpness=1.0)
    point = calibrate(cal_logits, cal_y, NAMES, target=0.01, min_count=100)
    bound = calibrate(cal_logits, cal_y, NAMES, target=0.01, min_count=100, confidence=0.9)
    assert bound.notes and "at 0.9 confidence" in bound.notes[0]
    for name in NAMES:
        assert bound.per_class[name] is None or bound.per_class[name] >= point.per_class[name]
    assert bound.coverage < point.coverage
    over = {"point": 0, "bound": 0}
    for seed in range(100, 140):
        logits, y = toy(n=6000, seed=seed, sharpness=1.0)
        for kind, c in (("point", point), ("bound", bound)):
            p = softmax(logits, c.temperature)
            acc = apply_thresholds(p, NAMES, c.per_class, c.default)
            over[kind] += (p.argmax(1)[acc] != y[acc]).mean() > 0.01
    assert over["point"] >= 10 and over["bound"] <= 4, over
