"""Config errors name the file, the section and the key."""

import tomllib
from pathlib import Path

import pytest

from edgekd_train.config import ConfigError, from_dict, load_config, to_toml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.toml")))
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / name)
    # the resolved TOML reads back to the same config
    again = from_dict(tomllib.loads(to_toml(cfg)), "resolved")
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "text,needle",
    [
        ("[student]\nepoch = 3\n", "[student].epoch: unknown key"),
        ('[student]\nepochs = "3"\n', "[student].epochs: '3' has the wrong type (expected an integer)"),
        ('[distill]\nmethod = "dkdx"\n', "[distill].method: unknown method 'dkdx'"),
        ('[distill]\nmethod = "edam"\n', "[student].model: 'cnn-70k' returns no attention maps"),
        ('[student]\nmodel = "resnet9000"\n', "[student].model: unknown model 'resnet9000'"),
        ('[teacher]\nmodel = "nope"\n', "[teacher].model: unknown model 'nope'"),
        ('[run]\ndevice = "tpu"\n', "[run].device: 'tpu' is not allowed"),
        ("[distill]\nalpha = 1.5\n", "[distill].alpha: 1.5 is out of range"),
        ("[run]\namp = 1\n", "[run].amp: 1 has the wrong type"),
        ("[bogus]\nx = 1\n", "[bogus]: unknown section"),
    ],
)
def test_config_errors_name_file_section_key(tmp_path, text, needle):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: "), msg
    assert needle in msg, msg


def test_overrides_and_warning(tmp_path):
    warnings = []
    p = _write(tmp_path, '[distill]\nmethod = "scratch"\nT = 2.0\n')
    cfg = load_config(p, ["student.epochs=3", "data.limit_train=7000", "run.device=cpu"], warn=warnings.append)
    assert cfg.student.epochs == 3 and cfg.data.limit_train == 7000 and cfg.run.device == "cpu"
    assert any("distill.T" in w for w in warnings)
    with pytest.raises(ConfigError, match=r"\[student\].epochs"):
        load_config(p, ["student.epochs=abc"])


@pytest.mark.parametrize(
    "text,needle",
    [
        # CRLD's views belong to crld and dtokd; crld is nothing without them.
        ('[distill]\nmethod = "kd"\nviews = "crld"\n', "[distill].views: 'crld' is not valid with method 'kd'"),
        (
            '[distill]\nmethod = "scratch"\nviews = "crld"\n',
            "[distill].views: 'crld' is not valid with method 'scratch'",
        ),
        ('[distill]\nmethod = "crld"\nviews = "single"\n', "[distill].views: 'single' is not valid with method 'crld'"),
        ('[distill]\nviews = "both"\n', "[distill].views: 'both' is not allowed"),
        # DTO-KD needs a distillation objective; the exact form is two objectives, eager, one process.
        (
            '[distill]\nmethod = "dtokd"\n[dtokd]\nkl_loss = false\nfeature_loss = false\n',
            "[dtokd].kl_loss: false together with feature_loss = false",
        ),
        (
            '[distill]\nmethod = "dtokd"\n[dtokd]\nbalancer = "exact"\n',
            "[dtokd].balancer: 'exact' solves the two-objective case",
        ),
        (
            '[distill]\nmethod = "dtokd"\n[dtokd]\nbalancer = "exact"\nfeature_loss = false\n'
            '[run]\ncompile = "default"\n',
            "[dtokd].balancer: 'exact' takes two backward passes",
        ),
        (
            '[distill]\nmethod = "dtokd"\nviews = "crld"\n[dtokd]\nkl_loss = false\n',
            "[dtokd].kl_loss: false with [distill].views = 'crld'",
        ),
        ('[distill]\nmethod = "dtokd"\n[dtokd]\nbalancer = "mgda"\n', "[dtokd].balancer: 'mgda' is not allowed"),
        ("[crld]\ntau_w = 1.5\n", "[crld].tau_w: 1.5 is out of range"),
        ("[crld]\nthreshold = 0.5\n", "[crld].threshold: unknown key"),
        ('[run]\ncompile = "max-autotune"\n', "[run].compile: 'max-autotune' is not allowed"),
        ('[student]\nlr_scaling = "cubic"\n', "[student].lr_scaling: 'cubic' is not allowed"),
    ],
)
def test_invalid_combinations_are_rejected_by_file_section_key(tmp_path, text, needle):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: ") and needle in str(e.value), str(e.value)


def test_feature_loss_needs_a_teacher_with_features(tmp_path):
    ts = tmp_path / "teacher.ts"
    ts.write_bytes(b"not read by validation beyond existence")
    p = _write(tmp_path, f'[distill]\nmethod = "dtokd"\n[teacher]\nmodel = "torchscript:{ts}"\n')
    with pytest.raises(ConfigError, match=r"\[dtokd\]\.feature_loss: teacher 'torchscript:.*' exposes logits only"):
        load_config(p)
    assert load_config(p, ["dtokd.feature_loss=false"]).dtokd.feature_loss is False


def test_valid_combinations_and_the_views_they_resolve_to(tmp_path):
    cases = {
        '[distill]\nmethod = "crld"\n': "crld",
        '[distill]\nmethod = "dtokd"\n': "single",
        '[distill]\nmethod = "dtokd"\nviews = "crld"\n': "crld",
        '[distill]\nmethod = "kd"\nviews = "single"\n': "single",
        '[distill]\nmethod = "dtokd"\n[dtokd]\nbalancer = "exact"\nkl_loss = false\n': "single",
    }
    for text, views in cases.items():
        assert load_config(_write(tmp_path, text)).views == views, text
    from edgekd_train.config import VIEWS
    from edgekd_train.data.views import VIEW_KINDS

    assert VIEWS == VIEW_KINDS


def test_keys_the_method_does_not_use_are_named_in_a_warning(tmp_path):
    warnings = []
    p = _write(tmp_path, '[distill]\nmethod = "kd"\n[crld]\ntau_w = 0.8\n[dtokd]\nclip_norm = 2.0\n')
    load_config(p, warn=warnings.append)
    assert len(warnings) == 1 and "crld.tau_w, dtokd.clip_norm" in warnings[0]
    warnings.clear()
    # dtokd with CRLD's views uses the thresholds and KL weights but not w_ce: FAMO's update does
    # not change with an objective's scale.
    p = _write(tmp_path, '[distill]\nmethod = "dtokd"\nviews = "crld"\nalpha = 0.5\n[crld]\ntau_w = 0.8\nw_ce = 2.0\n')
    load_config(p, warn=warnings.append)
    assert len(warnings) == 1 and "crld.w_ce, distill.alpha" in warnings[0] and "tau_w" not in warnings[0]


def test_every_key_is_documented_in_methods_md():
    import dataclasses

    from edgekd_train.config import SECTIONS, TABLES

    doc = Path(__file__).resolve().parents[2] / "docs" / "METHODS.md"
    if not doc.is_file():
        pytest.skip("docs/METHODS.md is not part of this checkout")
    text = doc.read_text(encoding="utf-8")
    missing = [
        f"{name}.{f.name}"
        for name, cls in SECTIONS.items()
        for f in dataclasses.fields(TABLES.get(name, cls))
        if f"| `{f.name}` |" not in text and f"| `{name}.{f.name}` |" not in text
    ]
    assert not missing, f"docs/METHODS.md does not document {missing}"
