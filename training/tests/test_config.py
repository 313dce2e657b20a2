"""Config errors name the file, the section and the key."""

from pathlib import Path

import pytest

from edgekd_train.config import ConfigError, load_config, to_toml, from_dict
import tomllib

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", ["fashion-kd.toml", "fashion-scratch.toml", "tiny-cpu.toml"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / name)
    # the resolved TOML reads back to the same config
    again = from_dict(tomllib.loads(to_toml(cfg)), "resolved")
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("text,needle", [
    ("[student]\nepoch = 3\n", "[student].epoch: unknown key"),
    ("[student]\nepochs = \"3\"\n", "[student].epochs: '3' has the wrong type (expected an integer)"),
    ("[distill]\nmethod = \"dkdx\"\n", "[distill].method: unknown method 'dkdx'"),
    ("[student]\nmodel = \"resnet9000\"\n", "[student].model: unknown model 'resnet9000'"),
    ("[teacher]\nmodel = \"nope\"\n", "[teacher].model: unknown model 'nope'"),
    ("[run]\ndevice = \"tpu\"\n", "[run].device: 'tpu' is not allowed"),
    ("[distill]\nalpha = 1.5\n", "[distill].alpha: 1.5 is out of range"),
    ("[run]\namp = 1\n", "[run].amp: 1 has the wrong type"),
    ("[bogus]\nx = 1\n", "[bogus]: unknown section"),
])
def test_config_errors_name_file_section_key(tmp_path, text, needle):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: "), msg
    assert needle in msg, msg


def test_overrides_and_warning(tmp_path):
    warnings = []
    p = _write(tmp_path, "[distill]\nmethod = \"scratch\"\nT = 2.0\n")
    cfg = load_config(p, ["student.epochs=3", "data.limit_train=7000", "run.device=cpu"], warn=warnings.append)
    assert cfg.student.epochs == 3 and cfg.data.limit_train == 7000 and cfg.run.device == "cpu"
    assert any("distill.T" in w for w in warnings)
    with pytest.raises(ConfigError, match=r"\[student\].epochs"):
        load_config(p, ["student.epochs=abc"])
