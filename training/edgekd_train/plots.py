"""Reliability diagram, risk-coverage curve and DTO-KD gradient balance (PNG, matplotlib Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .calibrate import N_BINS, softmax


def _bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS):
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)  # same bins as calibrate.ece
    acc = np.full(n_bins, np.nan)
    mconf = np.full(n_bins, np.nan)
    for b in range(n_bins):
        m = idx == b
        if m.any():
            acc[b], mconf[b] = correct[m].mean(), conf[m].mean()
    return acc, mconf


def reliability_png(
    logits: np.ndarray, labels: np.ndarray, temperature: float, ece_before: float, ece_after: float, path: Path
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    centers = (np.arange(N_BINS) + 0.5) / N_BINS
    for t, name, ece, mk in (
        (1.0, "before (T=1)", ece_before, "o-"),
        (temperature, f"after (T={temperature:.3f})", ece_after, "s-"),
    ):
        acc, conf = _bins(softmax(logits, t), labels)
        m = ~np.isnan(acc)
        ax.plot(conf[m], acc[m], mk, label=f"{name}, ECE {ece:.4f}")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlabel("confidence (mean per bin, 15 bins)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Reliability on the calibration split")
    ax.legend(loc="upper left", fontsize=8)
    del centers
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def risk_coverage_png(
    logits: np.ndarray, labels: np.ndarray, temperature: float, target: float, coverage: float | None, path: Path
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = softmax(logits, temperature)
    order = np.argsort(-p.max(1), kind="stable")
    wrong = (p.argmax(1) != labels)[order]
    n = len(labels)
    cov = np.arange(1, n + 1) / n
    risk = np.cumsum(wrong) / np.arange(1, n + 1)
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
    ax.plot(cov, risk, label="error among accepted (single threshold)")
    ax.axhline(target, color="r", ls="--", lw=1, label=f"target {target:g}")
    if coverage is not None:
        ax.axvline(coverage, color="g", ls=":", lw=1, label=f"chosen thresholds: coverage {coverage:.3f}")
    ax.set_xlabel("coverage (fraction accepted)")
    ax.set_ylabel("risk")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(float(risk.max()) * 1.05, target * 2, 1e-3))
    ax.set_title("Risk-coverage on the calibration split")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def gradient_balance_png(records: list[dict], path: Path) -> Path:
    """DTO-KD diagnostics over training (methods.md section 3.2): for each distillation objective k,
    conflict (inner product and cosine of grad L_k and grad L_task; below 0 they pull apart),
    dominance (log10 of ||grad L_k|| / ||grad L_task||; far from 0, one objective drowns the
    other), and the objective weights pi. ``records`` are DTO-KD's "diagnostics" events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in records], dtype=float)
    objectives = sorted({k[len("inner_") :] for r in records for k in r if k.startswith("inner_")})
    weights = sorted({k[len("pi_") :] for r in records for k in r if k.startswith("pi_")})

    def series(key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else float(r[key]) for r in records])

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), dpi=100, sharex=True)
    panels = [
        (axes[0, 0], "inner product <g_k, g_task>", lambda k: series(f"inner_{k}")),
        (axes[0, 1], "cosine(g_k, g_task)", lambda k: series(f"cosine_{k}")),
        (axes[1, 0], "log10 ||g_k|| / ||g_task||", lambda k: np.log10(np.clip(series(f"norm_ratio_{k}"), 1e-12, None))),
    ]
    for ax, label, get in panels:
        for k in objectives:
            ax.plot(steps, get(k), ".-", ms=3, lw=1, label=k)
        ax.axhline(0.0, color="k", lw=0.8, ls="--")  # no conflict / equal norms
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    ax = axes[1, 1]
    for k in weights:
        ax.plot(steps, series(f"pi_{k}"), ".-", ms=3, lw=1, label=f"pi_{k}")
    ax.set_ylabel("objective weight pi")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("training step")
    fig.suptitle("DTO-KD gradient conflict and dominance (student parameters)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
