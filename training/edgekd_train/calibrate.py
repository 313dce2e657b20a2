"""Post-hoc calibration: temperature scaling, ECE and per-class accept thresholds.

Everything here works on numpy arrays of logits (shape (N, K)) and integer labels
(shape (N,)); torch is not needed. The numbers go into ``card["calibration"]``.

Verdict rule (design.md section 3): ``p = softmax(logits / T)``, ``c = max p``; a frame
is *accepted* when ``c >= accept[predicted class]``, otherwise it goes to review. A
``null`` threshold means the calibration split could not support the target for that
class, so its frames always go to review.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

N_BINS = 15
DEFAULT_TARGET = 0.01
DEFAULT_MIN_COUNT = 100


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    logz = np.log(np.exp(z).sum(axis=1))
    labels = np.asarray(labels, dtype=np.int64)
    return float(np.mean(logz - z[np.arange(len(labels)), labels]))


def fit_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    lo: float = 0.05,
    hi: float = 20.0,
    tol: float = 1e-6,
) -> float:
    """Temperature T minimising calibration NLL, by golden-section search on log T.

    NLL(T) is unimodal in log T for a fixed set of logits, so a bounded 1-D search is
    enough (and deterministic). The result is clamped to ``[lo, hi]``.
    """
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(logits, labels, np.exp(c)), nll(logits, labels, np.exp(d))
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(logits, labels, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(logits, labels, np.exp(d))
    return float(np.exp((a + b) / 2.0))


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins.

    Bin ``b`` holds confidences in ``(b/n, (b+1)/n]`` (the first bin also holds 0).
    ECE = sum over bins of ``|accuracy - mean confidence| * bin_count / N``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            total += abs(correct[m].mean() - conf[m].mean()) * m.sum()
    return float(total / len(labels))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Bin(n, p) <= k), summed in log space (n up to the size of a calibration split)."""
    if k >= n or p <= 0.0:
        return 1.0
    i = np.arange(k + 1)
    lf = _log_factorials(n)
    log_pmf = lf[n] - lf[i] - lf[n - i] + i * math.log(p) + (n - i) * math.log1p(-p)
    top = log_pmf.max()
    return float(min(1.0, math.exp(top) * np.exp(log_pmf - top).sum()))


def _log_factorials(n: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])


def error_bound_holds(errors: int, n: int, target: float, confidence: float) -> bool:
    """Whether the one-sided Clopper-Pearson upper bound on the error rate, at ``confidence``,
    from ``errors`` in ``n`` is <= ``target``. The bound is <= target exactly when
    P(Bin(n, target) <= errors) <= 1 - confidence (the CDF falls as the rate rises)."""
    return binomial_cdf(errors, n, target) <= 1.0 - confidence


def prefix_threshold(
    conf: np.ndarray,
    correct: np.ndarray,
    target: float = DEFAULT_TARGET,
    min_count: int = DEFAULT_MIN_COUNT,
    confidence: float = 0.0,
) -> tuple[float | None, str | None]:
    """Threshold from the longest high-confidence prefix meeting ``target``.

    Samples are sorted by confidence, descending. The chosen prefix is the longest one
    whose error rate is ``<= target`` and that holds at least ``min_count`` samples; the
    threshold is the confidence of its last sample. A prefix may only end where the
    next sample's confidence is strictly lower, so that ``c >= threshold`` accepts
    exactly the prefix (ties are never split).

    With ``confidence`` > 0 a prefix must also have its Clopper-Pearson upper bound on the
    error rate at that confidence ``<= target``: the observed rate of the chosen prefix sits
    at the target by construction, so without the bound new data sees more errors.

    Returns ``(threshold, None)`` or ``(None, reason)``.
    """
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(conf)
    if n < min_count:
        return None, f"{n} calibration predictions, fewer than the minimum {min_count}"
    order = np.argsort(-conf, kind="stable")
    c = conf[order]
    errors = np.cumsum(~correct[order])
    lengths = np.arange(1, n + 1)
    ok = errors <= target * lengths + 1e-12
    ok &= lengths >= min_count
    boundary = np.ones(n, dtype=bool)
    boundary[:-1] = c[1:] < c[:-1]
    ok &= boundary
    if confidence > 0.0:
        # The bound is above the observed rate, so only prefixes passing the point test can pass.
        for j in np.nonzero(ok)[0][::-1]:
            if error_bound_holds(int(errors[j]), int(lengths[j]), target, confidence):
                return float(c[j]), None
        return None, (
            f"no prefix of at least {min_count} of its {n} calibration predictions "
            f"has error <= {target:g} at {confidence:g} confidence"
        )
    if not ok.any():
        return None, f"no prefix of at least {min_count} of its {n} calibration predictions has error <= {target:g}"
    last = int(np.nonzero(ok)[0].max())
    return float(c[last]), None


@dataclass
class Calibration:
    """Result of :func:`calibrate`; :meth:`to_card` gives ``card["calibration"]``."""

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    default: float | None
    per_class: dict[str, float | None]
    target: float
    coverage: float | None
    error_among_accepted: float | None
    notes: list[str] = field(default_factory=list)

    def to_card(self) -> dict:
        return {
            "temperature": self.temperature,
            "ece": {"before": self.ece_before, "after": self.ece_after},
            "accept": {"default": self.default, "per_class": dict(self.per_class)},
            "target": {
                "max_error_among_accepted": self.target,
                "coverage_on_calibration_set": self.coverage,
            },
            "notes": list(self.notes),
        }


def apply_thresholds(
    probs: np.ndarray,
    labels_names: Sequence[str],
    per_class: dict[str, float | None],
    default: float | None,
) -> np.ndarray:
    """Boolean accept mask using the runtime rule (per-class entry, else default; null rejects)."""
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    thr = []
    for name in labels_names:
        t = per_class[name] if name in per_class else default
        thr.append(np.inf if t is None else t)
    return conf >= np.asarray(thr)[pred]


def calibrate(
    logits: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str],
    target: float = DEFAULT_TARGET,
    min_count: int = DEFAULT_MIN_COUNT,
    confidence: float = 0.0,
) -> Calibration:
    """Fit T on the calibration split, then choose the default and per-class thresholds
    (``confidence``: see :func:`prefix_threshold`)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or logits.shape[1] != len(label_names):
        raise ValueError(f"logits shape {logits.shape} does not match {len(label_names)} labels")
    t = fit_temperature(logits, labels)
    p0 = softmax(logits)
    p1 = softmax(logits, t)
    pred = p1.argmax(axis=1)
    conf = p1.max(axis=1)
    correct = pred == labels
    notes: list[str] = []
    if confidence > 0.0:
        notes.append(
            f"thresholds hold error among accepted <= {target:g} at {confidence:g} confidence "
            "(one-sided Clopper-Pearson bound on each threshold's calibration predictions)"
        )

    default, why = prefix_threshold(conf, correct, target, min_count, confidence)
    if default is None:
        notes.append(f"default threshold is null: {why}")
    per_class: dict[str, float | None] = {}
    for k, name in enumerate(label_names):
        m = pred == k
        thr, why = prefix_threshold(conf[m], correct[m], target, min_count, confidence)
        per_class[name] = thr
        if thr is None:
            notes.append(f"{name}: threshold is null (always review): {why}")

    acc = apply_thresholds(p1, label_names, per_class, default)
    coverage = float(acc.mean())
    err = float((~correct[acc]).mean()) if acc.any() else None
    return Calibration(
        temperature=t,
        ece_before=ece(p0, labels),
        ece_after=ece(p1, labels),
        nll_before=nll(logits, labels),
        nll_after=nll(logits, labels, t),
        default=default,
        per_class=per_class,
        target=target,
        coverage=coverage,
        error_among_accepted=err,
        notes=notes,
    )
