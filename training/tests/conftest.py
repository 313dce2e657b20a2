import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TRAINING = Path(__file__).resolve().parents[1]
# Allow `python -m pytest training/tests` without `pip install -e training`.
sys.path.insert(0, str(TRAINING))

HAVE_FASHION = Path("/usr/share/datasets/fashion-mnist").is_dir()


@pytest.fixture
def learnable_batch():
    """A 32-image batch whose label is written into the image (a bright block at a class-specific
    place), plus a noisier copy as the strong view: a student can fit it in a few steps."""
    import torch

    def make(n: int = 32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % 10
        x = torch.randn(n, 1, 28, 28, generator=g) * 0.3
        for i in range(n):
            r, c = divmod(int(y[i]), 5)
            x[i, 0, 4 + 10 * r : 10 + 10 * r, 2 + 5 * c : 6 + 5 * c] += 2.0
        strong = x + torch.randn(n, 1, 28, 28, generator=g) * 0.3
        return {"image": x, "image_strong": strong, "label": y}

    return make


@pytest.fixture
def confident_teacher():
    """A wrn16-1 with its classifier scaled up: untrained, but as sure of itself as a trained
    teacher, so CRLD's confidence masks open for some samples and not for others."""
    import torch

    from edgekd_train.models import create_model

    def make(scale: float = 40.0):
        torch.manual_seed(1)
        t = create_model("wrn16-1", 10, 1)
        with torch.no_grad():
            t.fc.weight.mul_(scale)
        return t.eval()

    return make


@pytest.fixture
def teacher_weights(tmp_path):
    """A random wrn16-1 state_dict file: end-to-end runs load it instead of training a teacher."""
    import torch

    from edgekd_train.models import create_model

    torch.manual_seed(0)
    path = tmp_path / "teacher-wrn16-1.pt"
    torch.save(create_model("wrn16-1", 10, 1).state_dict(), path)
    return path


@pytest.fixture
def cli():
    """``cli(args)``: ``python -m edgekd_train ARGS`` -> (CompletedProcess, events parsed from stdout;
    every stdout line must be one)."""

    def run(args, timeout=240):
        env = dict(os.environ)
        env["PYTHONPATH"] = str(TRAINING) + os.pathsep + env.get("PYTHONPATH", "")
        r = subprocess.run(
            [sys.executable, "-m", "edgekd_train", *args], capture_output=True, text=True, timeout=timeout, env=env
        )
        return r, [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()]

    return run


@pytest.fixture(scope="module")
def scripts():
    """``scripts(name)``: training/scripts/NAME.py loaded as a module (the scripts are not a package)."""
    loaded = []

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, TRAINING / "scripts" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up there
        loaded.append(name)
        spec.loader.exec_module(mod)
        return mod

    yield load
    for name in loaded:
        sys.modules.pop(name, None)
