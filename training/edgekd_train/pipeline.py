"""``distill``: teacher -> student -> calibrate -> export, emitting the events of events.py."""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from . import calibrate as cal_mod
from .config import Config, ConfigError, write_resolved
from .data.feed import Feed
from .data.multimodal import COLORS, ModalitySpec
from .data.splits import DataError, load_splits
from .distillers import DISTILLERS, create_distiller
from .export import build_card, card_input, export_student
from .models import EXTERNAL_PREFIXES, count_params, create_model, input_names
from .plots import gradient_balance_png, reliability_png, risk_coverage_png
from .train import Context, fit, predict


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


def distiller_params(cfg: Config, n_train: int) -> dict:
    """Constructor arguments of ``cfg.distill.method``'s distiller, from its config sections;
    ``n_train`` (the training samples) sizes CRD's memory banks."""
    d, c, t = cfg.distill, cfg.crld, cfg.dtokd
    crld = {"tau_w": c.tau_w, "tau_s": c.tau_s, "w_wv": c.w_wv, "w_cv": c.w_cv}
    e, r = cfg.edam, cfg.crd
    crd = {"n_data": n_train, "feat_dim": r.feat_dim, "k": r.k, "tau": r.tau, "momentum": r.momentum}
    if d.method == "kd":
        return {"T": d.T, "alpha": d.alpha}
    if d.method == "edam":
        return {"T": d.T, "layers": e.layers, "beta": e.beta, "alpha": e.alpha}
    if d.method == "crd":
        return {"T": d.T, "beta": r.beta, "alpha": r.alpha, **crd}
    if d.method == "edam+crd":
        return {"T": d.T, "layers": e.layers, "beta_edam": e.beta, "beta": r.beta, "alpha": r.alpha, **crd}
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


def model_specs(cfg: Config, splits, section: str) -> list[ModalitySpec]:
    """The data's inputs the teacher or student sees, in [inputs] order."""
    return [splits.spec(name) for name in cfg.model_inputs(section)]


def build_model(cfg: Config, splits, section: str, **kwargs) -> torch.nn.Module:
    """The teacher or student, built for the inputs it sees; a model that cannot take them is a
    ConfigError naming the section."""
    specs = model_specs(cfg, splits, section)
    try:
        return create_model(
            getattr(cfg, section).model,
            len(splits.labels),
            specs[0].channels,
            inputs=[(s.name, s.channels, s.optional) for s in specs],
            image_size=specs[0].size[0],
            **kwargs,
        )
    except ValueError as e:
        raise ConfigError(f"{cfg.source}: [{section}].model: {e}") from None


def card_inputs(specs: list[ModalitySpec], norm) -> list[dict]:
    """``card["inputs"]`` for a model that sees ``specs``, normalised as the data was."""
    return [
        card_input(
            s.name,
            (1, s.channels, *s.size),
            COLORS[s.channels],
            norm.by_modality[s.name].scale,
            norm.by_modality[s.name].mean,
            norm.by_modality[s.name].std,
            s.optional,
        )
        for s in specs
    ]


def missing_subsets(specs: list[ModalitySpec]) -> list[tuple[str, ...]]:
    """Each set of inputs a frame may come with besides all of them: every required input plus
    some (not all) of the optional ones, largest first, in card order."""
    optional = [s.name for s in specs if s.optional]
    subsets = []
    for k in range(len(optional) - 1, -1, -1):
        for kept in itertools.combinations(optional, k):
            subsets.append(tuple(s.name for s in specs if not s.optional or s.name in kept))
    return subsets


def subset_name(present: tuple[str, ...]) -> str:
    """How the card and the runtime name a set of present inputs (``rgb+height``)."""
    return "+".join(present)


def evaluate_subsets(model, specs: list[ModalitySpec], data, feed: Feed, ctx, labels: list[str]) -> dict:
    """Test accuracy and per-class accuracy with every input present and with each subset of
    them (the others made missing, the teacher's "height zeroed"), keyed by subset name."""
    names = tuple(s.name for s in specs)
    out = {}
    for present in (names, *missing_subsets(specs)):
        pred = predict(model, data, feed, ctx, missing=[n for n in names if n not in present]).argmax(1)
        truth = data.labels.cpu()
        out[subset_name(present)] = {
            "accuracy": float((pred == truth).double().mean()),
            "per_class": {
                label: float((pred[truth == k] == k).double().mean()) if bool((truth == k).any()) else None
                for k, label in enumerate(labels)
            },
        }
    return out


def calibrate_subset(
    student, specs, present, calib, feed, ctx, labels, cc
) -> tuple[cal_mod.Calibration, np.ndarray, np.ndarray]:
    """The calibration of frames with exactly the inputs ``present``: chosen on the calibration
    samples that have all of them, the others made missing."""
    names = [s.name for s in specs]
    rows = torch.ones(len(calib), dtype=torch.bool, device=calib.labels.device)
    for name in present:
        rows &= calib.present[name]
    subset = calib.select(rows)
    if len(subset) == 0:
        raise DataError(f"no calibration sample has every input of {subset_name(present)}")
    logits = predict(student, subset, feed, ctx, missing=[n for n in names if n not in present]).double().numpy()
    truth = subset.labels.cpu().numpy()
    cal = cal_mod.calibrate(
        logits, truth, labels, cc.max_error_among_accepted, cc.min_samples_per_class, cc.bound_confidence
    )
    return cal, logits, truth


def reference_samples(specs, data, feed: Feed, n: int, learned_token: bool) -> list[dict]:
    """The first ``n`` test samples as graph inputs, once with every input present and once per
    missing subset, so parity covers every subset the box may see."""
    names = [s.name for s in specs]
    optional = [s.name for s in specs if s.optional]
    rows = torch.arange(min(n, len(data)), device=data.labels.device)
    samples = []
    for present in (tuple(names), *missing_subsets(specs)):
        batch = feed.replace(channels_last=False).eval_batch(data, rows, [m for m in names if m not in present])
        for i in range(len(rows)):
            sample = {m: batch[m][i : i + 1].cpu().numpy() for m in names}
            if learned_token:
                sample.update({f"{m}_present": batch[f"{m}_present"][i : i + 1].cpu().numpy() for m in optional})
            samples.append(sample)
    return samples


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

    splits = load_splits(cfg.data, cfg.inputs)
    norm = splits.normalizer
    stats = ", ".join(f"{k} mean {n.mean} std {n.std}" for k, n in norm.by_modality.items())
    log(f"data: train {len(splits.train)}, calibration {len(splits.calibration)}, test {len(splits.test)}; {stats}")
    train, test, calib = splits.train.to(device), splits.test.to(device), splits.calibration.to(device)
    optional = tuple(s.name for s in splits.specs if s.optional)
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
        teacher = build_model(cfg, splits, "teacher", weights=tc.weights, new_head=tc.finetune).to(device)
        teacher_feed = Feed(norm, optional, tc.modality_dropout)
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
                teacher_feed,
                ctx,
                ckpt_dir / "teacher.pt",
                resume,
            )
        teacher.eval()
        t_specs = model_specs(cfg, splits, "teacher")
        t_subsets = evaluate_subsets(teacher, t_specs, test, teacher_feed, ctx, splits.labels)
        t_acc = t_subsets[subset_name(tuple(s.name for s in t_specs))]["accuracy"]
        teacher_info = {"model": tc.model, "params": count_params(teacher), "test_accuracy": t_acc}
        if len(t_subsets) > 1:
            teacher_info["by_subset"] = t_subsets
        if is_main:
            torch.save(teacher.state_dict(), out / "teacher.pt")
        log(f"teacher {tc.model}: test accuracy {t_acc:.4f}")

    # ---- student
    sc = cfg.student
    seed_everything(cfg.run.seed + 1)  # the student's init does not depend on whether a teacher was trained
    student = build_model(cfg, splits, "student")
    s_specs = model_specs(cfg, splits, "student")
    try:
        distiller = create_distiller(cfg.distill.method, student, teacher, **distiller_params(cfg, len(train)))
    except ValueError as e:
        raise ConfigError(f"{cfg.source}: [distill].method: {cfg.distill.method!r}: {e}") from None
    student_feed = Feed(norm, optional, sc.modality_dropout)
    res = fit("student", distiller, sc, train, test, student_feed, ctx, ckpt_dir / "student.pt", resume)
    student = distiller.student.eval()
    s_subsets = evaluate_subsets(student, s_specs, test, student_feed, ctx, splits.labels)
    learned_token = any(n.endswith("_present") for n in input_names(student))
    if any(s.optional for s in s_specs) and not learned_token:
        log(
            f"student {sc.model}: takes no presence inputs, so a missing optional input reaches it as zeros "
            "(the card's policy is zero-fill)"
        )
    warm = (res.throughput or {}).get("warmup_steps_left_out", 0)
    log(
        f"student {sc.model}: test accuracy {res.test_accuracy:.4f}, {res.images_per_s:.0f} images/s "
        f"(last epoch; the phase's first {warm} steps are not timed)"
    )

    # ---- calibrate (calibration split = end of the training set), once per set of present inputs
    emit({"event": "phase", "phase": "calibrate"})
    cc = cfg.calibration
    all_inputs = tuple(s.name for s in s_specs)
    cal, cal_logits, cal_labels = calibrate_subset(
        student, s_specs, all_inputs, calib, student_feed, ctx, splits.labels, cc
    )
    subsets = []
    for present in missing_subsets(s_specs):
        sub, _, _ = calibrate_subset(student, s_specs, present, calib, student_feed, ctx, splits.labels, cc)
        subsets.append({"present": list(present), **sub.to_card()})
        log(
            f"calibration with {subset_name(present)}: T {sub.temperature:.3f}, coverage {sub.coverage:.3f} "
            f"at error <= {sub.target:g}"
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
        inputs = card_inputs(s_specs, norm)
        calibration = cal.to_card()
        if subsets:
            calibration["subsets"] = subsets
        card = build_card(
            name=name,
            labels=splits.labels,
            inputs=inputs,
            calibration=calibration,
            method=cfg.distill.method,
            teachers=[cfg.teacher.model] if teacher_info else [],
            dataset=cfg.data.dataset,
            metrics=metrics,
            command=command,
            learned_token=learned_token,
        )
        ref = reference_samples(s_specs, test, student_feed, cfg.export.reference_samples, learned_token)
        exp = export_student(student, card, ref, out, cfg.export.opset)
        notes = list(cal.notes)
        if exp["max_abs_diff"] is None:
            notes.append("onnxruntime not installed: ONNX parity not checked in Python")
        summary = {
            "event": "summary",
            "teacher": teacher_info,
            "student": {
                "model": sc.model,
                "params": params,
                "test_accuracy": res.test_accuracy,
                "by_subset": s_subsets,
            },
            "method": cfg.distill.method,
            "onnx": exp["onnx"],
            "onnx_bytes": exp["onnx_bytes"],
            "temperature": cal.temperature,
            "ece_before": cal.ece_before,
            "ece_after": cal.ece_after,
            "target": cal.target,
            "coverage": cal.coverage if cal.error_among_accepted is not None else None,
            "error_among_accepted": cal.error_among_accepted,
            "subsets": [
                {k: sub[k] for k in ("present", "temperature")}
                | {"coverage": sub["target"]["coverage_on_calibration_set"]}
                for sub in subsets
            ],
            "notes": notes,
            "reference_dir": str(out / "reference"),
            "images_per_s": res.images_per_s,
            "losses": res.losses or {},
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
