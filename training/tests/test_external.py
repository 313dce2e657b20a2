"""Teachers from outside the registry: timm models with a local weights file (as they are, or
fine-tuned from a backbone trained on other data) and the errors a wrong file gives."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from edgekd_train.config import ConfigError, load_config
from edgekd_train.export import parity_tolerance
from edgekd_train.models import create_model, feature_dim, features_and_logits
from edgekd_train.models.external import ExternalModelError

TRAINING = Path(__file__).resolve().parents[1]
TINY = TRAINING / "configs" / "tiny-cpu.toml"
HAVE_DATA = Path("/usr/share/datasets/fashion-mnist").is_dir()


def _save(model, path):
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture
def imagenet_file(tmp_path):
    """A timm test_resnet shaped like an ImageNet checkpoint (1000 classes, RGB): what a user has
    on disk before fine-tuning a teacher on their own data."""
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False)
    return m, _save(m, tmp_path / "test_resnet_in1k.pth")


def test_weights_for_the_same_data_load_exactly(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1).eval()
    path = _save(src, tmp_path / "w.pth")
    m = create_model("timm:test_resnet", 10, 1, path).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(m(x), src(x))
        f, logits = features_and_logits(m, x)
    assert f.shape == (4, feature_dim(m)) and torch.allclose(logits, src(x), atol=1e-6)


def test_a_backbone_for_other_classes_needs_finetune(imagenet_file):
    _, path = imagenet_file
    with pytest.raises(ExternalModelError) as e:
        create_model("timm:test_resnet", 10, 1, path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: the classifier fc.weight has shape (1000, ")
    assert "[teacher].finetune = true" in msg


def test_finetune_replaces_the_head_and_adapts_the_first_conv(imagenet_file):
    src, path = imagenet_file
    m = create_model("timm:test_resnet", 10, 1, path, new_head=True)
    assert m.get_classifier().weight.shape[0] == 10
    got, want = m.state_dict(), src.state_dict()
    # Every backbone tensor is the file's; RGB -> gray sums the first conv's filters (timm's rule).
    assert torch.allclose(got["conv1.0.weight"], want["conv1.0.weight"].sum(dim=1, keepdim=True))
    backbone = [k for k in want if not k.startswith(("fc.", "conv1.0."))]
    assert backbone and all(torch.equal(got[k], want[k]) for k in backbone)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = _save(timm.create_model("test_convnext", pretrained=False, num_classes=10, in_chans=1), tmp_path / "c.pth")
    with pytest.raises(ExternalModelError, match=r"c\.pth: weights do not fit timm:test_resnet"):
        create_model("timm:test_resnet", 10, 1, path, new_head=True)


def test_a_file_that_is_not_weights_is_named(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a checkpoint")
    with pytest.raises(ExternalModelError, match=r"notes\.txt: not a PyTorch weights file"):
        create_model("timm:test_resnet", 10, 1, str(bad))
    with pytest.raises(ExternalModelError, match=r"gone\.pth: no such weights file"):
        create_model("timm:test_resnet", 10, 1, str(tmp_path / "gone.pth"))
    with pytest.raises(ExternalModelError, match=r"timm:no_such_net: "):
        create_model("timm:no_such_net", 10, 1, str(bad))


@pytest.mark.parametrize(
    "teacher,needle",
    [
        ('model = "timm:test_resnet"\nfinetune = true\n', "[teacher].weights: required for a timm teacher"),
        ('model = "wrn16-1"\nfinetune = true\n', "[teacher].finetune: true with no [teacher].weights"),
        ('model = "torchscript:{w}"\nweights = "{w}"\nfinetune = true\n', "[teacher].finetune: a TorchScript teacher"),
        (
            'model = "timm:test_resnet"\nweights = "{w}"\nfinetune = true\nepochs = 0\n',
            "[teacher].finetune: true with [teacher].epochs = 0 (expected >= 1)",
        ),
    ],
)
def test_finetune_config_errors_name_the_key(tmp_path, teacher, needle):
    w = tmp_path / "w.pth"
    w.write_bytes(b"x")
    p = tmp_path / "c.toml"
    p.write_text("[teacher]\n" + teacher.format(w=w))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: ") and needle in str(e.value), str(e.value)


@pytest.mark.skipif(not HAVE_DATA, reason="/usr/share/datasets/fashion-mnist absent (dataset-fashion-mnist)")
def test_distill_from_a_finetuned_timm_teacher(tmp_path, imagenet_file):
    """The whole command: an ImageNet-shaped timm backbone is fine-tuned on Fashion-MNIST as the
    teacher, then DTO-KD distils its logits and pooled features into the student."""
    _, path = imagenet_file
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(TRAINING) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekd_train",
            "distill",
            "--config",
            str(TINY),
            "--out",
            str(out),
            "--set",
            'teacher.model="timm:test_resnet"',
            "--set",
            f'teacher.weights="{path}"',
            "--set",
            "teacher.finetune=true",
            "--set",
            'distill.method="dtokd"',
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    evs = [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()]
    teacher_phase = next(e for e in evs if e["event"] == "phase" and e["phase"] == "teacher")
    assert "skipped" not in teacher_phase  # fine-tuned, not just loaded
    assert any(e["event"] == "epoch" and e.get("phase") == "teacher" for e in evs)
    summary = evs[-1]
    assert summary["event"] == "summary" and summary["teacher"]["model"] == "timm:test_resnet"
    assert summary["method"] == "dtokd" and summary["parity_max_abs_diff"] <= parity_tolerance()
    # The fine-tuned teacher is saved whole: it loads as it is, without finetune.
    m = create_model("timm:test_resnet", 10, 1, str(out / "teacher.pt"))
    assert m.get_classifier().weight.shape[0] == 10
