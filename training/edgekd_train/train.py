"""The epoch loop shared by teacher and student training.

Design choices (why):
* No host syncs inside a step: loss and accuracy are summed on the device and read once per
  epoch; only the <= ``log_steps`` step events per epoch read a loss value.
* bf16 autocast and channels_last are decided once, where the Context is built: the pipeline
  turns them on only on CUDA (CPU bf16 is slow and changes numerics); tests turn them on on
  the CPU to run the same code path under CPU autocast.
* Checkpoints hold model(s) + optimizer + scheduler + epoch + RNG and are always an
  *epoch-end* state, so a resumed run replays whole epochs (the schedulers' step counts stay
  consistent). An interrupt saves the last epoch-end snapshot kept in memory.
* DDP: the whole Distiller is wrapped (the frozen teacher has no grads, so DDP ignores it);
  each rank trains on its shard of the same per-epoch permutation; only rank 0 writes.
* The update itself is ``Distiller.step`` (backward on "total" unless a method balances its
  objectives), called with the loop's forward: DDP-wrapped, autocast, maybe compiled
  (compiling.py). With compile on, the last partial batch is dropped so shapes stay static.
* images/s leaves out the first ``timing_warmup_steps`` steps of a phase (compile, CUDA-graph
  capture, cuDNN autotuning) and the per-epoch evaluation; one view pair counts as one image.
* The global batch (batch_size x processes) and the learning rate move together by
  ``lr_scaling`` (none, linear or sqrt from ``lr_base_batch``).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .compiling import Compiler, choose, describe, is_compile_error
from .data.feed import Feed
from .data.multimodal import MultiTensorData, epoch_rows
from .data.tensors import steps_per_epoch
from .data.views import ViewMaker
from .distillers import Distiller, StepFunctions
from .models import inputs_of


class Interrupted(Exception):
    def __init__(self, phase: str, checkpoint: str | None):
        super().__init__(f"interrupted during {phase}")
        self.phase = phase
        self.checkpoint = checkpoint


@dataclass
class Context:
    device: torch.device
    rank: int
    world: int
    emit: Callable[[dict], None]
    out: Path
    seed: int
    amp: bool  # bf16 autocast on this device
    channels_last: bool  # models and batches in channels_last memory format
    checkpoint_every: int
    log_steps: int
    augment_flip: bool
    augment_shift: int
    log: Callable[[str], None]
    compile: str = "off"
    timing_warmup_steps: int = 10
    strong_ops: int = 2  # CRLD strong view: RandAugment ops per image
    cutout: float = 0.5  # CRLD strong view: largest Cutout side, as a fraction of the width
    compile_backend: str | Callable = "inductor"  # tests only: dynamo's "eager", or a failing backend

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


@dataclass
class FitResult:
    test_accuracy: float
    images_per_s: float  # last epoch, warm-up steps left out
    epochs: int
    resumed_from: int = 0
    throughput: dict | None = None  # all epochs of this process: images/s, what was timed, how it ran
    losses: dict[str, float] | None = None  # the named loss terms over the last epoch


@torch.no_grad()
def predict(
    model: nn.Module,
    data: MultiTensorData,
    feed: Feed,
    ctx: Context,
    batch: int = 1000,
    missing: Collection[str] = (),
) -> torch.Tensor:
    """fp32 logits (N, K) on the CPU, model in eval mode (restored afterwards); the inputs in
    ``missing`` are made missing in every sample (``Feed.eval_batch``).

    Never under autocast: these logits give the accuracy written on the card and the temperature
    and thresholds the box applies to the fp32 ONNX model's outputs, so they must be that
    model's; bf16 keeps 8 significant bits, so its confidences are not the exported model's.
    (cuDNN may still use TF32 for the convolutions on CUDA, 11 bits, left as it is.)"""
    was = model.training
    model.eval()
    feed = feed.replace(channels_last=ctx.channels_last)
    out = []
    rows = torch.arange(len(data), device=data.labels.device)
    for s in range(0, len(data), batch):
        b = feed.eval_batch(data, rows[s : s + batch], missing)
        out.append(model(*inputs_of(model, b)).float())
    model.train(was)
    return torch.cat(out).cpu()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels.cpu()).double().mean())


def effective_lr(sec, world: int = 1) -> float:
    """``sec.lr`` moved to the global batch by ``sec.lr_scaling`` (linear: Goyal et al. 2017 for
    SGD; sqrt: the usual rule for Adam-type optimisers)."""
    power = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}[sec.lr_scaling]
    return sec.lr * (sec.batch_size * world / sec.lr_base_batch) ** power


def make_optimizer(params, sec, lr: float | None = None, fused: bool = False) -> torch.optim.Optimizer:
    lr = sec.lr if lr is None else lr
    if sec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=sec.momentum, weight_decay=sec.weight_decay, nesterov=True)
    # fused: one kernel for the whole update instead of a few per parameter tensor (CUDA only).
    return torch.optim.AdamW(params, lr=lr, weight_decay=sec.weight_decay, fused=fused or None)


def make_scheduler(opt, sec, total_steps: int, lr: float | None = None):
    lr = sec.lr if lr is None else lr
    total_steps = max(1, total_steps)
    if sec.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=0.2)
    if sec.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _s: 1.0)


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if hasattr(m, "module") and isinstance(m, nn.parallel.DistributedDataParallel) else m


def _state(distiller: Distiller, opt, sched, epoch: int, phase: str, extra: dict) -> dict:
    """An epoch-end checkpoint, with every tensor copied to the CPU (safe to keep in memory)."""
    to_cpu = lambda sd: {k: v.detach().cpu().clone() for k, v in sd.items()}  # noqa: E731
    mods = distiller.trainable_modules()
    state = {
        "phase": phase,
        "epoch": epoch,
        "model": to_cpu(mods[0].state_dict()),
        "extra_modules": [to_cpu(m.state_dict()) for m in mods[1:]],
        "optimizer": copy.deepcopy(opt.state_dict()),
        "scheduler": sched.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
    }
    state.update(extra)
    # Optimizer state may hold CUDA tensors; move them so the snapshot does not pin GPU memory.
    for s in state["optimizer"]["state"].values():
        for k, v in list(s.items()):
            if torch.is_tensor(v):
                s[k] = v.cpu()
    return state


def save_checkpoint(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: an interrupt while writing never leaves half a checkpoint


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _restore(distiller: Distiller, opt, sched, st: dict) -> None:
    mods = distiller.trainable_modules()
    mods[0].load_state_dict(st["model"])
    # strict: a checkpoint of another method's modules must not be half restored.
    for m, sd in zip(mods[1:], st["extra_modules"], strict=True):
        m.load_state_dict(sd)
    # A copy: on CPU the optimiser would otherwise adopt (and then update) the snapshot's tensors.
    opt.load_state_dict(copy.deepcopy(st["optimizer"]))
    sched.load_state_dict(st["scheduler"])


def _step_tools(
    model: nn.Module, distiller: Distiller, feed: Feed, ctx: Context, compiler: Compiler
) -> tuple[StepFunctions, Feed]:
    forward = compiler(model)
    targets = compiler.without_cudagraphs(distiller.targets)

    def run_forward(batch):
        with ctx.autocast():
            return forward(batch)

    def run_targets(batch):
        with torch.no_grad(), ctx.autocast():
            return targets(batch)

    feed = feed.replace(flip=ctx.augment_flip, shift=ctx.augment_shift, channels_last=ctx.channels_last)
    if distiller.views != "single":
        (norm,) = feed.normalizer.by_modality.values()  # views other than "single" take one image input
        views = ViewMaker(
            distiller.views,
            norm,
            ctx.device,
            flip=ctx.augment_flip,
            shift=ctx.augment_shift,
            channels_last=ctx.channels_last,
            n_ops=ctx.strong_ops,
            cutout_frac=ctx.cutout,
            compile_fn=compiler.without_cudagraphs if compiler.enabled else None,
        )
        feed = feed.replace(views=views)
    return StepFunctions(run_forward, run_targets, ctx.world), feed


def fit(
    phase: str,
    distiller: Distiller,
    sec,
    train: MultiTensorData,
    test: MultiTensorData,
    feed: Feed,
    ctx: Context,
    ckpt_path: Path,
    resume: bool,
) -> FitResult:
    epochs = sec.epochs
    compiler, compile_note = choose(ctx.compile, ctx.device, ctx.world, ctx.compile_backend)
    # Compiled steps want one static batch shape: a last partial batch would recompile (and
    # re-record CUDA graphs) every epoch.
    drop_last = ctx.world > 1 or compiler.enabled
    steps = steps_per_epoch(len(train), sec.batch_size, ctx.world, drop_last=drop_last)
    distiller.to(ctx.device)
    if ctx.channels_last:
        for m in distiller.trainable_modules():
            m.to(memory_format=torch.channels_last)
        if distiller.teacher is not None and not isinstance(distiller.teacher, torch.jit.ScriptModule):
            distiller.teacher.to(memory_format=torch.channels_last)
    lr = effective_lr(sec, ctx.world)
    opt = make_optimizer(distiller.parameters_to_train(), sec, lr, fused=ctx.cuda)
    sched = make_scheduler(opt, sec, epochs * steps, lr)
    start = 0
    if resume and ckpt_path.is_file():
        st = load_checkpoint(ckpt_path)
        _restore(distiller, opt, sched, st)
        torch.set_rng_state(st["rng"]["torch"])
        if st["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["rng"]["cuda"])
        start = int(st["epoch"])
        ctx.log(f"{phase}: resuming from {ckpt_path} after epoch {start}")

    model = distiller
    if ctx.world > 1:
        model = nn.parallel.DistributedDataParallel(distiller, device_ids=[ctx.device.index] if ctx.cuda else None)
    if start < epochs:
        ctx.emit(
            {
                "event": "phase",
                "phase": phase,
                "epochs": epochs,
                "batch_size": sec.batch_size * ctx.world,
                "lr": lr,
                "views": distiller.views,
                "compile": compiler.mode,
            }
        )
        if compile_note:
            ctx.emit(
                {
                    "event": "compile",
                    "phase": phase,
                    "requested": ctx.compile,
                    "mode": compiler.mode,
                    "reason": compile_note,
                }
            )
    else:
        ctx.emit({"event": "phase", "phase": phase, "skipped": f"loaded from {ckpt_path}"})
    snapshot = _state(distiller, opt, sched, start, phase, {"done": start >= epochs})
    fns, batches = _step_tools(model, distiller, feed, ctx, compiler)
    first_compiled_step = compiler.enabled
    every = max(1, steps // ctx.log_steps)
    diag_every = distiller.diagnostics_every if ctx.is_main else 0
    global_step = start * steps
    timed_images, timed_seconds = 0, 0.0
    test_acc = float("nan")
    ips = 0.0
    throughput = None
    train_losses: dict[str, float] | None = None
    try:
        for epoch in range(start, epochs):
            model.train()
            gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed * 7919 + epoch * 31 + ctx.rank)
            loss_sum = torch.zeros((), device=ctx.device)
            term_sums: dict[str, torch.Tensor] = {}  # each named loss, summed over the epoch's samples
            correct = torch.zeros((), device=ctx.device, dtype=torch.long)
            seen = 0
            warmup = min(ctx.timing_warmup_steps, steps // 2) if epoch == start else 0
            diagnostics: list[tuple[int, dict]] = []
            if ctx.cuda:
                torch.cuda.synchronize()
            t_epoch = t0 = time.perf_counter()
            timed_from = 0
            for s, index in enumerate(
                epoch_rows(train, sec.batch_size, ctx.seed, epoch, ctx.rank, ctx.world, drop_last=drop_last)
            ):
                if s == warmup and warmup > 0:
                    if ctx.cuda:
                        torch.cuda.synchronize()
                    t0, timed_from = time.perf_counter(), seen
                compiler.mark_step()
                try:
                    batch = batches.train_batch(train, index, gen)
                    if diag_every and global_step % diag_every == 0:
                        with ctx.autocast():
                            diagnostics.append((global_step + 1, distiller.diagnose(batch)))
                    losses, logits = distiller.step(fns, batch, opt)
                except Exception as e:
                    if not (first_compiled_step and is_compile_error(e)):
                        raise
                    if ctx.world > 1:
                        # DDP's reducer may be half way through a backward; it cannot be rewound.
                        raise RuntimeError(
                            f"torch.compile failed under DDP ({describe(e)}); rerun with --set run.compile=off"
                        ) from e
                    # Undo whatever the failed step touched and carry on eagerly from the same batch.
                    _restore(distiller, opt, sched, snapshot)
                    compiler = Compiler("off")
                    fns, batches = _step_tools(model, distiller, feed, ctx, compiler)
                    ctx.emit(
                        {
                            "event": "compile",
                            "phase": phase,
                            "requested": ctx.compile,
                            "mode": "off",
                            "reason": f"compile failed, running eagerly: {describe(e)}",
                        }
                    )
                    batch = batches.train_batch(train, index, gen)
                    losses, logits = distiller.step(fns, batch, opt)
                first_compiled_step = False
                sched.step()
                global_step += 1
                yb = batch["label"]
                loss = losses["total"]
                for k, v in losses.items():
                    term_sums[k] = term_sums.get(k, 0.0) + v.float() * yb.shape[0]
                loss_sum += loss * yb.shape[0]
                correct += (logits.argmax(1) == yb).sum()
                seen += yb.shape[0]
                if ctx.is_main and (s % every == 0 or s == steps - 1):
                    ctx.emit(
                        {
                            "event": "step",
                            "phase": phase,
                            "epoch": epoch + 1,
                            "of": epochs,
                            "step": s + 1,
                            "steps": steps,
                            "loss": float(loss),
                            "losses": {k: float(v) for k, v in losses.items() if k != "total"},
                        }
                    )
            names = sorted(term_sums)
            if ctx.world > 1:
                stats = torch.stack(
                    [loss_sum, correct.to(loss_sum.dtype), torch.tensor(float(seen), device=ctx.device)]
                    + [term_sums[k].to(loss_sum.dtype) for k in names]
                )
                torch.distributed.all_reduce(stats)
                loss_sum, correct, seen_all = stats[0], stats[1], float(stats[2])
                term_sums = dict(zip(names, stats[3:], strict=True))
            else:
                seen_all = float(seen)
            train_loss, train_acc = float(loss_sum) / seen_all, float(correct) / seen_all  # one sync per epoch
            train_losses = {k: float(term_sums[k]) / seen_all for k in names if k != "total"}
            if ctx.cuda:
                torch.cuda.synchronize()
            t_end = time.perf_counter()
            secs = t_end - t_epoch
            n_timed = (seen - timed_from) * ctx.world  # equal shards under DDP (drop_last)
            ips = n_timed / (t_end - t0) if t_end > t0 else 0.0
            timed_images += n_timed
            timed_seconds += t_end - t0
            throughput = {
                "images_per_s": timed_images / timed_seconds if timed_seconds > 0 else 0.0,
                "timed_images": timed_images,
                "timed_seconds": timed_seconds,
                "warmup_steps_left_out": min(ctx.timing_warmup_steps, steps // 2),
                "batch_size": sec.batch_size * ctx.world,
                "lr": lr,
                "compile": compiler.mode,
                "amp": ctx.amp,
                "channels_last": ctx.channels_last,
                "views": distiller.views,
                "device": ctx.device.type,
                "world_size": ctx.world,
            }
            test_acc = accuracy(predict(distiller.student, test, feed, ctx), test.labels)
            done = epoch + 1
            snapshot = _state(
                distiller,
                opt,
                sched,
                done,
                phase,
                {
                    "done": done >= epochs,
                    "test_accuracy": test_acc,
                    "images_per_s": ips,
                    "throughput": throughput,
                    "losses": train_losses,
                },
            )
            if ctx.is_main:
                for step_no, d in diagnostics:
                    ctx.emit(
                        {
                            "event": "diagnostics",
                            "phase": phase,
                            "epoch": done,
                            "step": step_no,
                            **{k: float(v) for k, v in d.items()},
                        }
                    )
                ctx.emit(
                    {
                        "event": "epoch",
                        "phase": phase,
                        "epoch": done,
                        "of": epochs,
                        "loss": train_loss,
                        "losses": train_losses,
                        "train_accuracy": train_acc,
                        "test_accuracy": test_acc,
                        "images_per_s": ips,
                        "seconds": secs,
                    }
                )
                if done % ctx.checkpoint_every == 0 or done == epochs:
                    save_checkpoint(snapshot, ckpt_path)
                    ctx.emit({"event": "checkpoint", "phase": phase, "path": str(ckpt_path), "epoch": done})
    except KeyboardInterrupt:
        path = None
        if ctx.is_main:
            save_checkpoint(snapshot, ckpt_path)
            path = str(ckpt_path)
        raise Interrupted(phase, path) from None
    if start >= epochs:
        # Finished before (resume): report the stored last-epoch numbers.
        st = load_checkpoint(ckpt_path)
        test_acc = st.get("test_accuracy", accuracy(predict(distiller.student, test, feed, ctx), test.labels))
        ips = st.get("images_per_s", 0.0)
        throughput = st.get("throughput")
        train_losses = st.get("losses")
    distiller.eval()
    return FitResult(
        test_accuracy=test_acc,
        images_per_s=ips,
        epochs=epochs,
        resumed_from=start,
        throughput=throughput,
        losses=train_losses,
    )
