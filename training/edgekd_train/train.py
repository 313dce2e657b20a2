"""The epoch loop shared by teacher and student training.

Design choices (why):
* No host syncs inside a step: loss and accuracy are summed on the device and read once per
  epoch; only the <= ``log_steps`` step events per epoch read a loss value.
* bf16 autocast and channels_last only on CUDA (CPU bf16 is slow and changes numerics).
* Checkpoints hold model(s) + optimizer + scheduler + epoch + RNG and are always an
  *epoch-end* state, so a resumed run replays whole epochs (the schedulers' step counts stay
  consistent). An interrupt saves the last epoch-end snapshot kept in memory.
* DDP: the whole Distiller is wrapped (the frozen teacher has no grads, so DDP ignores it);
  each rank trains on its shard of the same per-epoch permutation; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .data.tensors import Normalizer, TensorData, augment, epoch_batches, steps_per_epoch
from .distillers import Distiller


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
    amp: bool
    channels_last: bool
    checkpoint_every: int
    log_steps: int
    augment_flip: bool
    augment_shift: int
    log: Callable[[str], None]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        if self.cuda and self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


@dataclass
class FitResult:
    test_accuracy: float
    images_per_s: float
    epochs: int
    resumed_from: int = 0


def _prepare(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if ctx.cuda and ctx.channels_last else x


@torch.no_grad()
def predict(model: nn.Module, data: TensorData, norm: Normalizer, ctx: Context, batch: int = 1000) -> torch.Tensor:
    """fp32 logits (N, K) on the CPU, model in eval mode (restored afterwards)."""
    was = model.training
    model.eval()
    out = []
    for s in range(0, len(data), batch):
        x = _prepare(norm(data.images[s : s + batch]), ctx)
        with ctx.autocast():
            out.append(model(x).float())
    model.train(was)
    return torch.cat(out).cpu()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels.cpu()).double().mean())


def make_optimizer(params, sec) -> torch.optim.Optimizer:
    if sec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=sec.lr, momentum=sec.momentum, weight_decay=sec.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=sec.lr, weight_decay=sec.weight_decay)


def make_scheduler(opt, sec, total_steps: int):
    total_steps = max(1, total_steps)
    if sec.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=sec.lr, total_steps=total_steps, pct_start=0.2)
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
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
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


def fit(phase: str, distiller: Distiller, sec, train: TensorData, test: TensorData, norm: Normalizer,
        ctx: Context, ckpt_path: Path, resume: bool) -> FitResult:
    epochs = sec.epochs
    steps = steps_per_epoch(len(train), sec.batch_size, ctx.world, drop_last=ctx.world > 1)
    distiller.to(ctx.device)
    if ctx.cuda and ctx.channels_last:
        for m in distiller.trainable_modules():
            m.to(memory_format=torch.channels_last)
    opt = make_optimizer(distiller.parameters_to_train(), sec)
    sched = make_scheduler(opt, sec, epochs * steps)
    start = 0
    if resume and ckpt_path.is_file():
        st = load_checkpoint(ckpt_path)
        mods = distiller.trainable_modules()
        mods[0].load_state_dict(st["model"])
        for m, sd in zip(mods[1:], st["extra_modules"]):
            m.load_state_dict(sd)
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        torch.set_rng_state(st["rng"]["torch"])
        if st["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["rng"]["cuda"])
        start = int(st["epoch"])
        ctx.log(f"{phase}: resuming from {ckpt_path} after epoch {start}")

    model = distiller
    if ctx.world > 1:
        model = nn.parallel.DistributedDataParallel(
            distiller, device_ids=[ctx.device.index] if ctx.cuda else None)
    if start < epochs:
        ctx.emit({"event": "phase", "phase": phase, "epochs": epochs})
    else:
        ctx.emit({"event": "phase", "phase": phase, "skipped": f"loaded from {ckpt_path}"})
    snapshot = _state(distiller, opt, sched, start, phase, {"done": start >= epochs})
    every = max(1, steps // ctx.log_steps)
    test_acc = float("nan")
    ips = 0.0
    try:
        for epoch in range(start, epochs):
            model.train()
            gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed * 7919 + epoch * 31 + ctx.rank)
            loss_sum = torch.zeros((), device=ctx.device)
            correct = torch.zeros((), device=ctx.device, dtype=torch.long)
            seen = 0
            if ctx.cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for s, (xb, yb) in enumerate(epoch_batches(train, sec.batch_size, ctx.seed, epoch, ctx.rank,
                                                       ctx.world, drop_last=ctx.world > 1)):
                xb = augment(xb, gen, ctx.augment_flip, ctx.augment_shift)
                batch = {"image": _prepare(norm(xb), ctx), "label": yb}
                with ctx.autocast():
                    losses, logits = model(batch)
                loss = losses["total"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.detach() * yb.shape[0]
                correct += (logits.detach().argmax(1) == yb).sum()
                seen += yb.shape[0]
                if ctx.is_main and (s % every == 0 or s == steps - 1):
                    ctx.emit({"event": "step", "phase": phase, "epoch": epoch + 1, "of": epochs,
                              "step": s + 1, "steps": steps, "loss": float(loss.detach())})
            if ctx.world > 1:
                stats = torch.stack([loss_sum, correct.to(loss_sum.dtype),
                                     torch.tensor(float(seen), device=ctx.device)])
                torch.distributed.all_reduce(stats)
                loss_sum, correct, seen_all = stats[0], stats[1], float(stats[2])
            else:
                seen_all = float(seen)
            train_loss, train_acc = float(loss_sum) / seen_all, float(correct) / seen_all  # one sync per epoch
            if ctx.cuda:
                torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            ips = seen_all / secs if secs > 0 else 0.0
            test_acc = accuracy(predict(distiller.student, test, norm, ctx), test.labels)
            done = epoch + 1
            snapshot = _state(distiller, opt, sched, done, phase,
                              {"done": done >= epochs, "test_accuracy": test_acc, "images_per_s": ips})
            if ctx.is_main:
                ctx.emit({"event": "epoch", "phase": phase, "epoch": done, "of": epochs, "loss": train_loss,
                          "train_accuracy": train_acc, "test_accuracy": test_acc, "images_per_s": ips,
                          "seconds": secs})
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
        test_acc = st.get("test_accuracy", accuracy(predict(distiller.student, test, norm, ctx), test.labels))
        ips = st.get("images_per_s", 0.0)
    distiller.eval()
    return FitResult(test_accuracy=test_acc, images_per_s=ips, epochs=epochs, resumed_from=start)
