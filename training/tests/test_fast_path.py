"""The fast path's guards: compile fallback, warm-up-free throughput, batch-scaled learning rate.

CPU only: torch.compile runs with dynamo's "eager" backend (tracing, guards and recompiles are
real; no inductor code generation), so these take seconds. What they cannot show is speed."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from edgekd_train import compiling
from edgekd_train.config import ConfigError, StudentConfig, load_config
from edgekd_train.data.feed import Feed
from edgekd_train.data.multimodal import MultiNormalizer, MultiTensorData
from edgekd_train.data.tensors import Normalizer
from edgekd_train.distillers import create_distiller
from edgekd_train.models import create_model
from edgekd_train.train import Context, effective_lr, fit

NORM = Normalizer((0.5,), (0.3,))
FEED = Feed(MultiNormalizer({"image": NORM}))
SEC = StudentConfig(model="cnn-18k", epochs=1, lr=3e-3, batch_size=16, schedule="constant")


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return MultiTensorData.one_input(
        torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8), torch.arange(n) % 10
    )


def _dtokd():
    torch.manual_seed(0)
    return create_distiller("dtokd", create_model("cnn-18k", 10, 1), create_model("wrn16-1", 10, 1))


def _fit(tmp_path: Path, distiller, compile="off", backend="inductor"):
    events = []
    # No flip/shift: the views draw no random numbers, so runs that diverge in how they got
    # there must end bit for bit equal.
    ctx = Context(
        device=torch.device("cpu"),
        rank=0,
        world=1,
        emit=events.append,
        out=tmp_path,
        seed=0,
        amp=False,
        channels_last=False,
        checkpoint_every=1,
        log_steps=5,
        augment_flip=False,
        augment_shift=0,
        log=lambda _m: None,
        compile=compile,
        compile_backend=backend,
        timing_warmup_steps=10,
    )
    res = fit("student", distiller, SEC, _data(64, 0), _data(20, 1), FEED, ctx, tmp_path / "student.pt", False)
    return res, events


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_compiled_dtokd_step_equals_the_eager_one_and_a_failed_compile_leaves_no_trace(tmp_path):
    eager = _dtokd()
    res, _ = _fit(tmp_path / "eager", eager)
    # 64 images / batch 16 = 4 steps; the first min(10, 4 // 2) = 2 are left out of images/s.
    assert res.throughput["warmup_steps_left_out"] == 2 and res.throughput["timed_images"] == 32
    assert res.images_per_s > 0 and res.throughput["compile"] == "off"

    # Traced by dynamo: the targets dict, FAMO's no-grad re-forward with frozen batch-norm
    # statistics (a guard and a recompile) and the in-place weight updates must all behave.
    traced = _dtokd()
    res_traced, events = _fit(tmp_path / "traced", traced, compile="default", backend="eager")
    assert not [e for e in events if e["event"] == "compile"]
    assert res_traced.throughput["compile"] == "default"
    assert _same_state(eager, traced)

    # A backend that fails once the step has already moved the model (FAMO's re-forward comes
    # after opt.step()): the phase restores its start state, reports it, and runs eagerly.
    failing = _dtokd()

    def backend(gm, example_inputs):
        if any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats
            for m in failing.student.modules()
        ):
            raise RuntimeError("this backend cannot compile the re-forward")
        return gm.forward

    res_failed, events = _fit(tmp_path / "failed", failing, compile="default", backend=backend)
    (ev,) = [e for e in events if e["event"] == "compile"]
    assert ev["mode"] == "off" and "compile failed, running eagerly" in ev["reason"]
    assert "this backend cannot compile the re-forward" in ev["reason"]
    assert res_failed.throughput["compile"] == "off"
    assert _same_state(eager, failing)


def test_compile_guards_report_why(monkeypatch):
    assert compiling.choose("off", torch.device("cpu"), 1) == (compiling.Compiler("off"), None)
    comp, why = compiling.choose("reduce-overhead", torch.device("cuda"), 2, backend="eager")
    assert comp.mode == "default" and "DDP" in why
    monkeypatch.setattr(compiling, "unavailable_reason", lambda device: "no C++ compiler for CPU inductor")
    comp, why = compiling.choose("default", torch.device("cpu"), 1)
    assert comp.mode == "off" and why == "compile unavailable, running eagerly: no C++ compiler for CPU inductor"


@pytest.mark.parametrize(
    "rule,world,want", [("none", 1, 4e-3), ("linear", 1, 16e-3), ("sqrt", 1, 8e-3), ("sqrt", 4, 16e-3)]
)
def test_learning_rate_follows_the_global_batch(rule, world, want):
    sec = StudentConfig(lr=4e-3, batch_size=1024, lr_scaling=rule, lr_base_batch=256)
    assert effective_lr(sec, world) == pytest.approx(want)


def test_exact_balancer_refuses_ddp_before_training(tmp_path, monkeypatch):
    from edgekd_train import pipeline

    p = tmp_path / "c.toml"
    p.write_text(
        '[distill]\nmethod = "dtokd"\n[dtokd]\nbalancer = "exact"\nfeature_loss = false\n'
        '[run]\ndevice = "cpu"\n[teacher]\nmodel = "wrn16-1"\n'
    )
    cfg = load_config(p)
    monkeypatch.setattr(pipeline, "init_distributed", lambda device: (0, 2, device))
    with pytest.raises(ConfigError, match=r"\[dtokd\]\.balancer: 'exact' runs in one process only"):
        pipeline.run_distill(cfg, tmp_path / "out", False, lambda ev: None, "pytest")
    assert not (tmp_path / "out").exists()
