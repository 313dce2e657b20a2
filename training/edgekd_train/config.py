"""Typed run configuration, loaded from TOML and validated strictly.

Every mistake is reported as ``ConfigError("<file>: [section].key: what is wrong (expected ...)")``
so that a user (or the Rust ``edge-kd distill`` front end, which shows the message verbatim) can
fix the file without reading Python. Unknown keys are errors, not warnings: a typo such as
``epoch = 20`` would otherwise silently train with the default.

    cfg = load_config("training/configs/fashion-kd.toml", overrides=["student.epochs=2"])
    write_resolved(cfg, "runs/x/config.resolved.toml")
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.fashion_mnist import DEFAULT_ROOT


class ConfigError(ValueError):
    """A bad configuration; the message names the file, section and key."""


# Allowed values and numeric ranges, kept next to the fields through dataclass metadata so the
# validator and the documentation cannot drift apart.
def _f(
    default: Any,
    *,
    choices: tuple | None = None,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    doc: str = "",
) -> Any:
    meta = {"choices": choices, "min": min, "max": max, "min_exclusive": min_exclusive, "doc": doc}
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    dataset: str = _f("fashion-mnist", choices=("fashion-mnist", "image-folder", "manifest"))
    path: str = _f(DEFAULT_ROOT, doc="manifest: the training manifest (CSV: id,label,<one column per [inputs] name>)")
    test_path: str | None = _f(None, doc="manifest only: the test manifest")
    labels: list[str] | None = _f(None, doc="manifest only: the classes in output order; unset: sorted labels of path")
    limit_train: int | None = _f(None, min=1, doc="use only the first N training images (tests)")
    limit_test: int | None = _f(None, min=1)
    calibration_split: int = _f(5000, min=1, doc="taken from the END of the training set")
    image_size: int = _f(28, min=4, doc="image-folder and manifest: every image is resized (stretch) to this")
    color: str = _f(
        "gray", choices=("gray", "rgb"), doc="fashion-mnist and image-folder (manifest: [inputs.<name>].color)"
    )
    augment_flip: bool = _f(True)
    augment_shift: int = _f(2, min=0, max=16, doc="random translation in pixels (zero padded)")


@dataclass
class TrainSection:
    model: str = _f("cnn-70k")
    epochs: int = _f(20, min=0)
    lr: float = _f(4e-3, min=0.0, min_exclusive=True)
    batch_size: int = _f(128, min=1)
    weight_decay: float = _f(5e-4, min=0.0)
    optimizer: str = _f("adamw", choices=("adamw", "sgd"))
    momentum: float = _f(0.9, min=0.0, max=1.0, doc="sgd only")
    schedule: str = _f("onecycle", choices=("onecycle", "cosine", "constant"))
    lr_scaling: str = _f(
        "none",
        choices=("none", "linear", "sqrt"),
        doc="lr is given for lr_base_batch; the lr used is lr * (global batch / lr_base_batch) ** (1 linear, 0.5 sqrt)",
    )
    lr_base_batch: int = _f(256, min=1, doc="global batch size (batch_size x processes) that lr is given for")
    inputs: list[str] | None = _f(None, doc="manifest: the [inputs] this model sees; unset: all of them")
    modality_dropout: float = _f(
        0.0, min=0.0, max=0.95, doc="drop each optional input of each training sample with this probability"
    )


@dataclass
class TeacherConfig(TrainSection):
    model: str = _f("wrn16-4")
    weights: str | None = _f(None, doc="load these weights instead of training")
    finetune: bool = _f(
        False, doc="train `epochs` more from `weights` (a timm backbone gets a new head for this data's classes)"
    )


@dataclass
class StudentConfig(TrainSection):
    pass


@dataclass
class InputConfig:
    """One input of manifest data, ``[inputs.<name>]``: <name> is its manifest column and the
    ONNX input's name."""

    color: str = _f("rgb", choices=("gray", "rgb"), doc="16-bit gray (a height map) keeps its full range")
    optional: bool = _f(False, doc="a sample may lack it (an empty manifest cell; the box may run without it)")


ATTENTION_METHODS = frozenset({"edam", "edam+crd"})
CONTRAST_METHODS = frozenset({"crd", "edam+crd"})
VIEWS = ("single", "crld")  # = data.views.VIEW_KINDS, which this module must not import (torch)


@dataclass
class DistillConfig:
    method: str = _f("kd")  # checked against the distiller registry in validate()
    T: float = _f(4.0, min=0.0, min_exclusive=True, doc="softmax temperature of every KL term (kd, crld, dtokd)")
    alpha: float = _f(0.9, min=0.0, max=1.0, doc="kd only: total = (1 - alpha) CE + alpha KD")
    views: str | None = _f(
        None,
        choices=VIEWS,
        doc="input views; unset: 'crld' for crld, 'single' otherwise. 'crld' is valid with crld and dtokd",
    )


@dataclass
class CRLDConfig:
    """CRLD (methods.md section 4.4, CIFAR defaults): used by crld, and by dtokd with views = 'crld'."""

    tau_w: float = _f(0.9, min=0.0, max=1.0, doc="weak-view teacher confidence gating the within-view KL")
    tau_s: float = _f(0.2, min=0.0, max=1.0, doc="strong-view teacher confidence gating the cross-view KL")
    w_ce: float = _f(1.0, min=0.0, doc="crld only: weight of CE on both views")
    w_wv: float = _f(2.0, min=0.0, doc="weight of the within-view KL")
    w_cv: float = _f(0.5, min=0.0, doc="weight of the cross-view KL")
    randaugment_ops: int = _f(2, min=0, max=8, doc="strong view: RandAugment ops per image")
    cutout: float = _f(0.5, min=0.0, max=1.0, doc="strong view: Cutout side at most this fraction of the width")
    log_every: int = _f(50, min=0, doc="share of samples passing tau_w / tau_s every N steps; 0 = never")


@dataclass
class DTOKDConfig:
    """DTO-KD (methods.md section 3): used by dtokd."""

    balancer: str = _f(
        "famo",
        choices=("famo", "exact"),
        doc="famo: amortised weights (section 3.4); exact: two-objective closed form, two backwards (section 3.3)",
    )
    kl_loss: bool = _f(True, doc="logit KD objective at [distill].T (CRLD's consistency with views = 'crld')")
    feature_loss: bool = _f(True, doc="projector feature objective (section 3.5)")
    weight_lr: float = _f(0.025, min=0.0, min_exclusive=True, doc="famo: Adam lr of the weight logits")
    weight_decay: float = _f(0.01, min=0.0, doc="famo: Adam weight decay of the weight logits")
    clip_norm: float = _f(1.0, min=0.0, doc="max gradient norm of student + projector; 0 = no clipping")
    log_every: int = _f(50, min=0, doc="gradient conflict/dominance diagnostics every N steps; 0 = never")


@dataclass
class EDAMConfig:
    """EDAM (methods.md section 5.4): used by edam and edam+crd."""

    layers: list[list[str]] | None = _f(
        None,
        doc='[[teacher_map, student_map], ...], e.g. [["rgb.cross1", "rgb.self1"]]; unset: every student '
        "self-attention layer with the teacher's cross-attention of the same stream and layer",
    )
    beta: float = _f(1.0, min=0.0, doc="weight of the attention-map cross-entropy")
    alpha: float = _f(0.0, min=0.0, doc="edam only: weight of logit KD at [distill].T")


@dataclass
class CRDConfig:
    """CRD (methods.md section 6): used by crd and edam+crd."""

    feat_dim: int = _f(128, min=1, doc="embedding width of both projection heads")
    k: int | None = _f(None, min=1, doc="negatives per anchor; unset: min(4096, training samples - 1)")
    tau: float = _f(0.07, min=0.0, min_exclusive=True, doc="NCE temperature")
    momentum: float = _f(0.5, min=0.0, max=0.999, doc="memory bank momentum")
    beta: float = _f(0.8, min=0.0, doc="weight of the contrastive term")
    alpha: float = _f(0.0, min=0.0, doc="weight of logit KD at [distill].T")


@dataclass
class CalibrationConfig:
    max_error_among_accepted: float = _f(0.01, min=0.0, max=1.0)
    min_samples_per_class: int = _f(100, min=1)
    # 0.9, not 0: thresholds chosen on the observed error broke the target on the test set for
    # all 20 students of the CPU study (docs/RESULTS.md, "Accept thresholds out of sample").
    bound_confidence: float = _f(
        0.9,
        min=0.0,
        max=0.999,
        doc="0: a threshold's observed error meets the target; 0.9: its one-sided "
        "Clopper-Pearson upper bound at 90 % confidence does",
    )


@dataclass
class ExportConfig:
    opset: int = _f(17, min=13, max=21)
    name: str | None = _f(None, doc="card name; default <dataset>-<student>-<method>")
    reference_samples: int = _f(8, min=1, max=1000)


@dataclass
class RunConfig:
    seed: int = _f(0)
    device: str = _f("auto", choices=("auto", "cpu", "cuda"))
    amp: bool = _f(True, doc="bf16 autocast; used on CUDA only")
    channels_last: bool = _f(True, doc="CUDA only")
    checkpoint_every: int = _f(1, min=1)
    threads: int | None = _f(None, min=1, doc="torch CPU threads")
    log_steps: int = _f(20, min=1, max=1000, doc="step events per epoch, at most")
    compile: str = _f(
        "off",
        choices=("off", "default", "reduce-overhead"),
        doc="torch.compile the training step; reduce-overhead adds CUDA graphs; falls back to "
        "eager (with a 'compile' event) when unavailable or failing",
    )
    timing_warmup_steps: int = _f(
        10,
        min=0,
        doc="steps at the start of a phase left out of images/s (compile, CUDA-graph capture, cuDNN autotuning)",
    )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    inputs: dict[str, InputConfig] = field(default_factory=dict)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    crld: CRLDConfig = field(default_factory=CRLDConfig)
    dtokd: DTOKDConfig = field(default_factory=DTOKDConfig)
    edam: EDAMConfig = field(default_factory=EDAMConfig)
    crd: CRDConfig = field(default_factory=CRDConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # Where it came from, for messages; not part of the TOML.
    source: str = field(default="<config>", metadata={"internal": True})

    @property
    def views(self) -> str:
        """The views the student trains on: [distill].views, or the method's own."""
        return self.distill.views or ("crld" if self.distill.method == "crld" else "single")

    def sections(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get("internal")}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            name: {k: dataclasses.asdict(v) for k, v in sec.items()} if name in TABLES else dataclasses.asdict(sec)
            for name, sec in self.sections().items()
        }

    def model_inputs(self, section: str) -> list[str]:
        """The [inputs] names the teacher or student sees, in [inputs] order (["image"] for
        fashion-mnist and image-folder data)."""
        if not self.inputs:
            return ["image"]
        chosen = getattr(self, section).inputs
        return [n for n in self.inputs if chosen is None or n in chosen]


SECTIONS = {k: v for k, v in typing.get_type_hints(Config).items() if k != "source"}
# Sections that are tables of named tables ([inputs.rgb], [inputs.height]) of this type.
TABLES = {"inputs": InputConfig}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    args = typing.get_args(tp)
    if args:
        return " or ".join("none" if a is type(None) else a.__name__ for a in args)
    return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}.get(
        tp.__name__, tp.__name__
    )


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int | None, float, list[str], ...)."""
    args = typing.get_args(tp)
    allowed = args if args and typing.get_origin(tp) is not list else (tp,)
    if value is None and type(None) in allowed:
        return None
    for a in allowed:
        if a is type(None):
            continue
        if typing.get_origin(a) is list:
            if not isinstance(value, list):
                continue
            (item,) = typing.get_args(a)
            return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        # bool is a subclass of int in Python: never let `true` pass as an integer.
        if a is bool and isinstance(value, bool):
            return value
        if a is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if a is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ConfigError(f"{where}: {value!r} is not finite (expected a finite number)")
            return float(value)
        if a is str and isinstance(value, str):
            return value
    raise ConfigError(f"{where}: {value!r} has the wrong type (expected {_type_name(tp)})")


def _check_meta(value: Any, meta: dict, where: str) -> None:
    if value is None:
        return
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(
            f"{where}: {value!r} is not allowed (expected one of {', '.join(map(repr, meta['choices']))})"
        )
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
        op = ">" if meta.get("min_exclusive") else ">="
        raise ConfigError(f"{where}: {value!r} is out of range (expected {op} {lo})")
    if hi is not None and value > hi:
        raise ConfigError(f"{where}: {value!r} is out of range (expected <= {hi})")


def _build_section(name: str, cls: type, raw: Any, src: str, explicit: set[str]) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: [{name}]: is not a table (expected a [{name}] section)")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        where = f"{src}: [{name}].{key}"
        if key not in fields:
            raise ConfigError(f"{where}: unknown key (expected one of {', '.join(sorted(fields))})")
        v = _coerce(value, hints[key], where)
        _check_meta(v, fields[key].metadata, where)
        kwargs[key] = v
        explicit.add(f"{name}.{key}")
    return cls(**kwargs)


def _build_tables(name: str, cls: type, raw: Any, src: str, explicit: set[str]) -> dict[str, Any]:
    """``[name.<key>]`` tables, each a ``cls``, in file order."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: [{name}]: is not a table (expected [{name}.<name>] tables)")
    return {key: _build_section(f"{name}.{key}", cls, table, src, explicit) for key, table in raw.items()}


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, value). The value is read as a TOML value when it
    parses as one (numbers, booleans, quoted strings), else taken as a bare string; ``none``
    clears an optional key."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text}: expected section.key=value")
    lhs, rhs = text.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    rhs = rhs.strip()
    if rhs.lower() in ("none", "null"):
        return section, key, None
    try:
        value = tomllib.loads(f"v = {rhs}")["v"]
    except tomllib.TOMLDecodeError:
        value = rhs
    return section, key, value


def from_dict(
    raw: dict,
    source: str = "<config>",
    overrides: list[str] | None = None,
    warn=lambda msg: print(msg, file=sys.stderr),
) -> Config:
    """Build and validate a Config from a parsed TOML dict (plus ``--set`` overrides)."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for k in raw:
        if k not in SECTIONS:
            raise ConfigError(f"{source}: [{k}]: unknown section (expected one of {', '.join(SECTIONS)})")
    cleared: set[str] = set()
    for ov in overrides or []:
        section, key, value = parse_override(ov)
        if section not in SECTIONS:
            raise ConfigError(f"--set {ov}: [{section}]: unknown section (expected one of {', '.join(SECTIONS)})")
        sec = raw.setdefault(section, {})
        if not isinstance(sec, dict):
            raise ConfigError(f"{source}: [{section}]: is not a table (expected a [{section}] section)")
        if section in TABLES:
            # --set inputs.height.optional=true: the named table's key.
            if "." not in key:
                raise ConfigError(f"--set {ov}: expected {section}.<name>.key=value")
            name, key = key.split(".", 1)
            sec = sec.setdefault(name, {})
            if not isinstance(sec, dict):
                raise ConfigError(f"{source}: [{section}.{name}]: is not a table")
            section = f"{section}.{name}"
            fields = {f.name for f in dataclasses.fields(TABLES[section.split(".")[0]])}
        else:
            fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
        if value is None:
            sec.pop(key, None)
            cleared.add(f"{section}.{key}")
            if key not in fields:
                raise ConfigError(
                    f"--set {ov}: [{section}].{key}: unknown key (expected one of {', '.join(sorted(fields))})"
                )
        else:
            sec[key] = value
    explicit: set[str] = set()
    secs = {
        name: _build_tables(name, TABLES[name], raw.get(name, {}), source, explicit)
        if name in TABLES
        else _build_section(name, cls, raw.get(name, {}), source, explicit)
        for name, cls in SECTIONS.items()
    }
    cfg = Config(**secs, source=source)
    validate(cfg, explicit, warn)
    return cfg


def validate(cfg: Config, explicit: set[str], warn) -> None:
    """Cross-field checks that a per-key type check cannot make."""
    # Imported here: the registries import torch, and a bad field name should be reported
    # even before torch is imported (fast failure for the Rust front end).
    from .distillers import DISTILLERS
    from .models import attention_models, check_model_name

    src = cfg.source
    if cfg.distill.method not in DISTILLERS:
        raise ConfigError(
            f"{src}: [distill].method: unknown method {cfg.distill.method!r} "
            f"(expected one of {', '.join(sorted(DISTILLERS))})"
        )
    needs_teacher = DISTILLERS[cfg.distill.method].needs_teacher
    for sec in ("student",) + (("teacher",) if needs_teacher else ()):
        why = check_model_name(getattr(cfg, sec).model)
        if why:
            raise ConfigError(f"{src}: [{sec}].model: {why}")
        if cfg.distill.method in ATTENTION_METHODS and getattr(cfg, sec).model not in attention_models():
            raise ConfigError(
                f"{src}: [{sec}].model: {getattr(cfg, sec).model!r} returns no attention maps, which method "
                f"{cfg.distill.method!r} distils (expected one of {', '.join(attention_models())})"
            )
    t = cfg.teacher
    if needs_teacher and t.model.startswith("timm:") and not t.weights:
        raise ConfigError(
            f"{src}: [teacher].weights: required for a timm teacher (expected a local weights file; "
            "nothing is downloaded)"
        )
    if needs_teacher and t.weights and not Path(t.weights).is_file():
        raise ConfigError(f"{src}: [teacher].weights: {t.weights}: no such file (expected a weights file)")
    if needs_teacher and t.model.startswith("torchscript:") and not Path(t.model.split(":", 1)[1]).is_file():
        raise ConfigError(f"{src}: [teacher].model: {t.model.split(':', 1)[1]}: no such TorchScript file")
    if needs_teacher and t.finetune:
        if not t.weights:
            raise ConfigError(
                f"{src}: [teacher].finetune: true with no [teacher].weights (expected weights to start from)"
            )
        if t.model.startswith("torchscript:"):
            raise ConfigError(
                f"{src}: [teacher].finetune: a TorchScript teacher is used as it is "
                "(expected false, or a registered or timm teacher)"
            )
        if t.epochs < 1:
            raise ConfigError(f"{src}: [teacher].finetune: true with [teacher].epochs = {t.epochs} (expected >= 1)")
    if needs_teacher and t.epochs == 0 and not t.weights and not t.model.startswith(("torchscript:", "timm:")):
        raise ConfigError(f"{src}: [teacher].epochs: 0 with no [teacher].weights (expected >= 1, or weights to load)")
    if cfg.student.epochs < 1:
        raise ConfigError(f"{src}: [student].epochs: {cfg.student.epochs} (expected >= 1)")
    _check_combination(cfg)
    _check_inputs(cfg, needs_teacher)
    unused = _unused_keys(cfg, explicit, needs_teacher)
    if unused:
        warn(
            f"{src}: warning: method {cfg.distill.method!r} with views {cfg.views!r} does not use "
            f"{', '.join(unused)} (ignored)"
        )
    if cfg.data.dataset == "fashion-mnist":
        if cfg.data.color != "gray":
            raise ConfigError(f"{src}: [data].color: {cfg.data.color!r} for fashion-mnist (expected 'gray')")
        if cfg.data.image_size != 28:
            raise ConfigError(f"{src}: [data].image_size: {cfg.data.image_size} for fashion-mnist (expected 28)")
    if cfg.data.limit_train is not None and cfg.data.limit_train <= cfg.data.calibration_split:
        raise ConfigError(
            f"{src}: [data].limit_train: {cfg.data.limit_train} leaves no training images after "
            f"the calibration split of {cfg.data.calibration_split} (expected > calibration_split)"
        )


def _check_inputs(cfg: Config, needs_teacher: bool) -> None:
    """[inputs] against the data set, and what each model sees of them."""
    src, d = cfg.source, cfg.data
    if d.dataset != "manifest":
        for key, given in (("[inputs]", cfg.inputs), ("[data].test_path", d.test_path), ("[data].labels", d.labels)):
            if given:
                raise ConfigError(
                    f"{src}: {key}: given for {d.dataset!r} data (expected only with dataset = 'manifest')"
                )
        for sec in ("teacher", "student"):
            if getattr(cfg, sec).inputs not in (None, ["image"]):
                raise ConfigError(
                    f"{src}: [{sec}].inputs: {d.dataset!r} data has one input, 'image' (expected no value)"
                )
            if getattr(cfg, sec).modality_dropout > 0:
                raise ConfigError(f"{src}: [{sec}].modality_dropout: {d.dataset!r} data has no optional input")
        return
    if not cfg.inputs:
        raise ConfigError(
            f"{src}: [inputs]: manifest data needs one [inputs.<column>] table per input "
            '(e.g. [inputs.rgb] color = "rgb")'
        )
    if not d.test_path:
        raise ConfigError(f"{src}: [data].test_path: manifest data needs a test manifest (expected a CSV path)")
    if d.labels is not None and (not d.labels or len(set(d.labels)) != len(d.labels)):
        raise ConfigError(f"{src}: [data].labels: {d.labels!r} (expected distinct class names)")
    if cfg.views == "crld":
        raise ConfigError(
            f"{src}: [distill].views: 'crld' is defined for one camera image, not manifest inputs (expected 'single')"
        )
    if all(i.optional for i in cfg.inputs.values()):
        raise ConfigError(f"{src}: [inputs]: every input is optional (expected at least one required input)")
    for sec in ("student",) + (("teacher",) if needs_teacher else ()):
        part = getattr(cfg, sec)
        if part.inputs is not None:
            unknown = [n for n in part.inputs if n not in cfg.inputs]
            if unknown or not part.inputs or len(set(part.inputs)) != len(part.inputs):
                raise ConfigError(
                    f"{src}: [{sec}].inputs: {part.inputs!r} (expected distinct names of [inputs]: "
                    f"{', '.join(cfg.inputs)})"
                )
        seen = cfg.model_inputs(sec)
        if all(cfg.inputs[n].optional for n in seen):
            raise ConfigError(
                f"{src}: [{sec}].inputs: {seen!r} are all optional (expected at least one required input)"
            )
        if part.modality_dropout > 0 and not any(cfg.inputs[n].optional for n in seen):
            raise ConfigError(
                f"{src}: [{sec}].modality_dropout: {part.modality_dropout} but the {sec} sees no optional "
                "input (expected 0, or an [inputs.<name>] with optional = true)"
            )


def _check_combination(cfg: Config) -> None:
    """The valid combinations of method, views, DTO-KD objectives/balancer and compile (docs/METHODS.md)."""
    src, method, d = cfg.source, cfg.distill.method, cfg.dtokd
    if cfg.views == "crld" and method not in ("crld", "dtokd"):
        raise ConfigError(
            f"{src}: [distill].views: 'crld' is not valid with method {method!r} (CRLD's weak+strong "
            "views feed methods 'crld' and 'dtokd'; expected 'single' or no value)"
        )
    if method == "crld" and cfg.views != "crld":
        raise ConfigError(
            f"{src}: [distill].views: {cfg.views!r} is not valid with method 'crld' (CRLD is defined on "
            "a weak and a strong view; expected 'crld' or no value)"
        )
    if method != "dtokd":
        return
    if not d.kl_loss and not d.feature_loss:
        raise ConfigError(
            f"{src}: [dtokd].kl_loss: false together with feature_loss = false leaves only the task "
            "objective (expected at least one distillation objective)"
        )
    if cfg.views == "crld" and not d.kl_loss:
        raise ConfigError(
            f"{src}: [dtokd].kl_loss: false with [distill].views = 'crld' (the crld views feed the kl "
            "objective, CRLD's within/cross-view consistency; expected true)"
        )
    n_objectives = 1 + d.kl_loss + d.feature_loss
    if d.balancer == "exact" and n_objectives != 2:
        raise ConfigError(
            f"{src}: [dtokd].balancer: 'exact' solves the two-objective case, but task + kl + feature "
            "make 3 (set kl_loss or feature_loss to false, or use 'famo')"
        )
    if d.balancer == "exact" and cfg.run.compile != "off":
        raise ConfigError(
            f"{src}: [dtokd].balancer: 'exact' takes two backward passes through one graph per step "
            f"and runs eagerly, but [run].compile = {cfg.run.compile!r} (expected compile = 'off', "
            "or balancer = 'famo')"
        )
    if d.feature_loss and cfg.teacher.model.startswith("torchscript:"):
        raise ConfigError(
            f"{src}: [dtokd].feature_loss: teacher {cfg.teacher.model!r} exposes logits only, not the "
            "pooled features the projector distils (expected false, or a registered or timm teacher)"
        )


def _unused_keys(cfg: Config, explicit: set[str], needs_teacher: bool) -> list[str]:
    """Keys set in the file that this method/views combination ignores (a warning, not an error:
    switching method in one line of an otherwise complete config is normal)."""
    method = cfg.distill.method

    def used(key: str) -> bool:
        section, name = key.split(".", 1)
        if section == "teacher" or key == "distill.T":
            return needs_teacher
        if key == "distill.alpha":
            return method == "kd"
        if section == "crld":
            return cfg.views == "crld" and (name not in ("w_ce", "log_every") or method == "crld")
        if section == "dtokd":
            return method == "dtokd"
        if section == "edam":
            return method in ATTENTION_METHODS and (name != "alpha" or method == "edam")
        if section == "crd":
            return method in CONTRAST_METHODS
        return True

    return sorted(k for k in explicit if not used(k))


def load_config(
    path: str | Path, overrides: list[str] | None = None, warn=lambda m: print(m, file=sys.stderr)
) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return from_dict(raw, str(path), overrides, warn)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        # json string escaping is a subset of TOML basic strings for what we write.
        import json

        return json.dumps(v, ensure_ascii=False)
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(cfg: Config) -> str:
    """The resolved configuration as TOML (None values are written as comments: TOML has no null)."""
    lines = [f"# resolved from {cfg.source}"]
    for name, sec in cfg.to_dict().items():
        tables = {f"{name}.{k}": v for k, v in sec.items()} if name in TABLES else {name: sec}
        for header, table in tables.items():
            lines.append(f"\n[{header}]")
            for k, v in table.items():
                lines.append(f"# {k} = (none)" if v is None else f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def write_resolved(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(to_toml(cfg), encoding="utf-8")
