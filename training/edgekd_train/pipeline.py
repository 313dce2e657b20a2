"""``distill``: teacher -> student -> calibrate -> export, emitting the events of events.py."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from . import calibrate as cal_mod
from .config import Config, ConfigError, write_resolved
from .data.splits import load_splits
from .distillers import DISTILLERS, create_distiller
from .export import build_card, export_student
from .models import EXTERNAL_PREFIXES, count_params, create_model
from .plots import gradient_balance_png, reliability_png, risk_coverage_png
from .train import Context, accuracy, fit, predict


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world, device). torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; plain runs are world 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend)
    rank = torch.distributed.get_rank()
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    return rank, world, device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def distiller_params(cfg: Config) -> dict:
    """Constructor arguments of ``cfg.distill.method``'s distiller, from its config sections."""
    d, c, t = cfg.distill, cfg.crld, cfg.dtokd
    crld = {"tau_w": c.tau_w, "tau_s": c.tau_s, "w_wv": c.w_wv, "w_cv": c.w_cv}
    if d.method == "kd":
        return {"T": d.T, "alpha": d.alpha}
    if d.method == "crld":
        return {"T": d.T, "w_ce": c.w_ce, "log_every": c.log_every, **crld}
    if d.method == "dtokd":
        return {
            "T": d.T,
            "views": cfg.views,
            "balancer": t.balancer,
            "kl_loss": t.kl_loss,
            "feature_loss": t.feature_loss,
            "weight_lr": t.weight_lr,
            "weight_decay": t.weight_decay,
            "clip_norm": t.clip_norm,
            "log_every": t.log_every,
            **crld,
        }
    return {}


def diagnostic_records(events_path: Path, phase: str = "student") -> list[dict]:
    """The run's "diagnostics" events, one per step (the last one wins: a resumed run replays the
    epoch it was interrupted in), in step order. Read back from events.jsonl so a resumed run
    plots its whole history."""
    by_step: dict[int, dict] = {}
    if events_path.is_file():
        for line in events_path.read_text(encoding="utf-8").splitlines():
            ev = json.loads(line) if line.strip() else {}
            if ev.get("event") == "diagnostics" and ev.get("phase") == phase:
                by_step[int(ev["step"])] = ev
    return [by_step[k] for k in sorted(by_step)]


def mask_summary(records: list[dict]) -> dict | None:
    """CRLD's gates over the last epoch that logged them: the mean share of samples each let
    through, and the teacher's mean confidence per view (None without CRLD's views)."""
    records = [r for r in records if "mask_weak" in r]
    if not records:
        return None
    last = [r for r in records if r["epoch"] == records[-1]["epoch"]]
    keys = ("mask_weak", "mask_strong", "teacher_conf_weak", "teacher_conf_strong")
    return {"epoch": last[0]["epoch"], "steps": len(last), **{k: sum(r[k] for r in last) / len(last) for k in keys}}


def run_distill(cfg: Config, out: Path, resume: bool, emit, command: str) -> dict:
    device = resolve_device(cfg.run.device)
    rank, world, device = init_distributed(device)
    if world > 1 and cfg.distill.method == "dtokd" and cfg.dtokd.balancer == "exact":
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        raise ConfigError(
            f"{cfg.source}: [dtokd].balancer: 'exact' runs in one process only (this is a "
            f"{world}-process torchrun; expected 'famo', or a single process)"
        )
    try:
        return _run(cfg, out, resume, emit, command, device, rank, world)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run(cfg, out, resume, emit, command, device, rank, world) -> dict:
    is_main = rank == 0
    if not is_main:
        emit.enabled = False
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    elif world > 1 and device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # ranks must not oversubscribe
    seed_everything(cfg.run.seed)
    if device.type == "cuda":
        # Shapes are fixed for a whole run: let cuDNN pick the fastest convolution once.
        torch.backends.cudnn.benchmark = True
    if is_main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        emit.open_copy(out / "events.jsonl")
        write_resolved(cfg, out / "config.resolved.toml")
    emit({"event": "start", "out": str(out), "device": device.type, "world_size": world, "config": cfg.to_dict()})

    splits = load_splits(cfg.data)
    log(
        f"data: train {len(splits.train)}, calibration {len(splits.calibration)}, test {len(splits.test)}; "
        f"mean {splits.normalizer.mean} std {splits.normalizer.std}"
    )
    train, test, calib = splits.train.to(device), splits.test.to(device), splits.calibration.to(device)
    norm = splits.normalizer
    n_cls, in_ch = len(splits.labels), splits.train.images.shape[1]
    cuda = device.type == "cuda"  # bf16 and channels_last pay off there only
    ctx = Context(
        device=device,
        rank=rank,
        world=world,
        emit=emit,
        out=out,
        seed=cfg.run.seed,
        amp=cuda and cfg.run.amp,
        channels_last=cuda and cfg.run.channels_last,
        checkpoint_every=cfg.run.checkpoint_every,
        log_steps=cfg.run.log_steps,
        augment_flip=cfg.data.augment_flip,
        augment_shift=cfg.data.augment_shift,
        log=log,
        compile=cfg.run.compile,
        timing_warmup_steps=cfg.run.timing_warmup_steps,
        strong_ops=cfg.crld.randaugment_ops,
        cutout=cfg.crld.cutout,
    )
    ckpt_dir = out / "checkpoints"

    # ---- teacher
    method_cls = DISTILLERS[cfg.distill.method]
    teacher, teacher_info = None, None
    if method_cls.needs_teacher:
        tc = cfg.teacher
        teacher = create_model(tc.model, n_cls, in_ch, tc.weights, new_head=tc.finetune).to(device)
        if (tc.weights or tc.model.startswith(EXTERNAL_PREFIXES)) and not tc.finetune:
            src = tc.weights or tc.model.split(":", 1)[1]
            emit({"event": "phase", "phase": "teacher", "skipped": f"loaded from {src}"})
        else:
            # The teacher is trained (or fine-tuned from its weights) with the scratch distiller:
            # same loop, checkpoints and resume.
            fit(
                "teacher",
                create_distiller("scratch", teacher),
                tc,
                train,
                test,
                norm,
                ctx,
                ckpt_dir / "teacher.pt",
                resume,
            )
        teacher.eval()
        t_acc = accuracy(predict(teacher, test, norm, ctx), test.labels)
        teacher_info = {"model": tc.model, "params": count_params(teacher), "test_accuracy": t_acc}
        if is_main:
            torch.save(teacher.state_dict(), out / "teacher.pt")
        log(f"teacher {tc.model}: test accuracy {t_acc:.4f}")

    # ---- student
    sc = cfg.student
    seed_everything(cfg.run.seed + 1)  # the student's init does not depend on whether a teacher was trained
    student = create_model(sc.model, n_cls, in_ch)
    distiller = create_distiller(cfg.distill.method, student, teacher, **distiller_params(cfg))
    res = fit("student", distiller, sc, train, test, norm, ctx, ckpt_dir / "student.pt", resume)
    student = distiller.student.eval()
    warm = (res.throughput or {}).get("warmup_steps_left_out", 0)
    log(
        f"student {sc.model}: test accuracy {res.test_accuracy:.4f}, {res.images_per_s:.0f} images/s "
        f"(last epoch; the phase's first {warm} steps are not timed)"
    )

    # ---- calibrate (calibration split = end of the training set)
    emit({"event": "phase", "phase": "calibrate"})
    cal_logits = predict(student, calib, norm, ctx).double().numpy()
    cal_labels = calib.labels.cpu().numpy()
    cc = cfg.calibration
    cal = cal_mod.calibrate(
        cal_logits,
        cal_labels,
        splits.labels,
        cc.max_error_among_accepted,
        cc.min_samples_per_class,
        cc.bound_confidence,
    )
    summary = None
    if is_main:
        plots = [
            str(
                reliability_png(
                    cal_logits, cal_labels, cal.temperature, cal.ece_before, cal.ece_after, out / "reliability.png"
                )
            ),
            str(
                risk_coverage_png(
                    cal_logits,
                    cal_labels,
                    cal.temperature,
                    cal.target,
                    cal.coverage if cal.error_among_accepted is not None else None,
                    out / "risk_coverage.png",
                )
            ),
        ]
        records = diagnostic_records(out / "events.jsonl")
        gradients = [r for r in records if any(k.startswith("cosine_") for k in r)]
        if gradients:
            plots.append(str(gradient_balance_png(gradients, out / "gradients.png")))

        # ---- export
        emit({"event": "phase", "phase": "export"})
        c, h, w = splits.train.images.shape[1:]
        n_ref = min(cfg.export.reference_samples, len(splits.test))
        ref_images = norm(splits.test.images[:n_ref]).numpy()
        name = cfg.export.name or f"{cfg.data.dataset}-{sc.model}-{cfg.distill.method}"
        params = count_params(student)
        metrics = {
            "test_accuracy": res.test_accuracy,
            "params": params,
            "calibration_nll_before": cal.nll_before,
            "calibration_nll_after": cal.nll_after,
        }
        if teacher_info:
            metrics["teacher_test_accuracy"] = teacher_info["test_accuracy"]
        card = build_card(
            name=name,
            labels=splits.labels,
            shape=(1, c, h, w),
            color=splits.color,
            scale=norm.scale,
            mean=norm.mean,
            std=norm.std,
            calibration=cal.to_card(),
            method=cfg.distill.method,
            teachers=[cfg.teacher.model] if teacher_info else [],
            dataset=cfg.data.dataset,
            metrics=metrics,
            command=command,
        )
        exp = export_student(student, card, ref_images, out, cfg.export.opset)
        notes = list(cal.notes)
        if exp["max_abs_diff"] is None:
            notes.append("onnxruntime not installed: ONNX parity not checked in Python")
        summary = {
            "event": "summary",
            "teacher": teacher_info,
            "student": {"model": sc.model, "params": params, "test_accuracy": res.test_accuracy},
            "method": cfg.distill.method,
            "onnx": exp["onnx"],
            "onnx_bytes": exp["onnx_bytes"],
            "temperature": cal.temperature,
            "ece_before": cal.ece_before,
            "ece_after": cal.ece_after,
            "target": cal.target,
            "coverage": cal.coverage if cal.error_among_accepted is not None else None,
            "error_among_accepted": cal.error_among_accepted,
            "notes": notes,
            "reference_dir": str(out / "reference"),
            "images_per_s": res.images_per_s,
            "throughput": res.throughput,
            "parity_max_abs_diff": exp["max_abs_diff"],
            "plots": plots,
        }
        masks = mask_summary(records)
        if masks:
            summary["crld_masks"] = {**masks, "tau_w": cfg.crld.tau_w, "tau_s": cfg.crld.tau_s}
        emit(summary)
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary or {}
