"""Write and read the edge-kd model card (design.md section 3).

The card is JSON stored in the ONNX model's ``metadata_props`` under the key
``edge_kd.card``. The single source of truth for its format is
``docs/card.schema.json`` in the repository; this module finds it by walking up from
this file (or from ``$EDGEKD_CARD_SCHEMA`` if set).

    from edgekd_train.card import validate_card, write_card, read_card
    write_card("model.onnx", card)          # validates, then stores it in place
    card = read_card("model.onnx")          # dict, or None when the model has no card

Besides the JSON Schema, :func:`validate_card` makes the checks a schema cannot express:

* every input's ``mean`` and ``std`` hold one value per channel: 1 for ``gray``, 3 for
  ``rgb``/``bgr``, and that count equals ``shape[1]`` (NCHW);
* ``calibration.accept.per_class`` keys are labels;
* input names are unique, and ``missing_modality.mask_input`` (when set) names an input;
* under ``missing_modality.policy`` ``"learned-token"``: at least one input is optional, there is
  no ``mask_input``, and no input is named like a presence input (``<name>_present`` of an
  optional input, a graph input the card does not list: :func:`presence_inputs`);
* ``calibration.subsets`` (the calibration of frames with only some inputs present; the top
  level is the one with every input) are given only when an input is optional; each
  ``present`` names card inputs, holds every non-optional input and not every input, no two
  are the same set, and their ``per_class`` keys are labels;
* the card's JSON, as :func:`write_card` stores it, is at most ``MAX_CARD_JSON_BYTES``.

The schema bounds every string and list (a card comes from a model file, which may come
from anywhere); the Rust reader (src/card.rs) refuses the same, with the same messages.

:func:`write_card` also checks the card against the graph: the output named
``card["output"]`` exists and its last dimension (when static) equals the number of
labels, and each card input names a graph input whose static dimensions match.

This module must not import torch.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import jsonschema
import onnx

CARD_KEY = "edge_kd.card"
SCHEMA_RELPATH = Path("docs") / "card.schema.json"
CHANNELS = {"gray": 1, "rgb": 3, "bgr": 3}
# The one bound JSON Schema cannot state; src/card.rs's MAX_CARD_JSON_BYTES, and the schema's
# description says it too.
MAX_CARD_JSON_BYTES = 4 << 20


class CardError(ValueError):
    """An invalid card; the message starts with the offending field, e.g. ``card.inputs[0].mean``."""


def find_schema_path() -> Path:
    """Locate docs/card.schema.json ($EDGEKD_CARD_SCHEMA, else walk up from this file)."""
    return find_shared_file(SCHEMA_RELPATH, "EDGEKD_CARD_SCHEMA", "card schema")


def find_shared_file(relpath: Path, env_var: str, what: str) -> Path:
    """A file the Rust runtime shares with this package (under docs/): $env_var, else the first
    parent of this file that holds ``relpath``."""
    env = os.environ.get(env_var)
    if env:
        p = Path(env)
        if not p.is_file():
            raise FileNotFoundError(f"{env_var}={env}: no such file")
        return p
    here = Path(__file__).resolve().parent
    for d in (here, *here.parents):
        p = d / relpath
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"{what} {relpath} not found in any parent of {here}; run from the edge-kd repository or set {env_var}"
    )


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The card JSON Schema as a dict (checked to be a valid draft 2020-12 schema)."""
    with open(find_schema_path(), encoding="utf-8") as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _field(path) -> str:
    out = "card"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _card_json(card: dict) -> str:
    """The text :func:`write_card` stores."""
    return json.dumps(card, ensure_ascii=False)


def _check_json_size(nbytes: int) -> None:
    if nbytes > MAX_CARD_JSON_BYTES:
        raise CardError(
            f"card: {nbytes} bytes of JSON, more than the {MAX_CARD_JSON_BYTES} "
            f"({MAX_CARD_JSON_BYTES >> 20} MiB) a card may take"
        )


def _schema_message(err) -> str:
    # jsonschema's own message for a bound quotes the whole value (100,000 labels, say) and
    # not the bound; this one names the bound, as the Rust reader's does.
    if err.validator == "maxItems":
        return f"{len(err.instance)} items, more than the {err.validator_value} a card allows"
    if err.validator == "maxLength":
        return f"{len(err.instance)} characters, more than the {err.validator_value} a card allows"
    return err.message


def validate_card(card: dict) -> None:
    """Raise :class:`CardError` unless ``card`` is a valid schema-1 card."""
    validator = jsonschema.Draft202012Validator(load_schema())
    err = jsonschema.exceptions.best_match(validator.iter_errors(card))
    if err is not None:
        raise CardError(f"{_field(err.absolute_path)}: {_schema_message(err)}")
    _check_json_size(len(_card_json(card).encode("utf-8")))

    for i, inp in enumerate(card["inputs"]):
        want = CHANNELS[inp["color"]]
        for key in ("mean", "std"):
            n = len(inp[key])
            if n != want:
                raise CardError(f"card.inputs[{i}].{key}: {n} values for a {inp['color']!r} input, expected {want}")
        if inp["shape"][1] != want:
            raise CardError(
                f"card.inputs[{i}].shape: {inp['shape'][1]} channels (shape[1]) for a "
                f"{inp['color']!r} input, expected {want}"
            )

    names = [inp["name"] for inp in card["inputs"]]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise CardError(
                f"card.inputs[{i}].name: {json.dumps(name)} is already the name of inputs[{names.index(name)}]"
            )
    mm = card.get("missing_modality") or {}
    mask = mm.get("mask_input")
    if mask is not None and mask not in names:
        raise CardError(
            f"card.missing_modality.mask_input: {json.dumps(mask)} is not one of the card's inputs ({', '.join(names)})"
        )
    optional = [inp["name"] for inp in card["inputs"] if inp.get("optional", False)]
    if mm.get("policy") == "learned-token":
        if not optional:
            raise CardError(
                'card.missing_modality.policy: "learned-token" needs at least one input with "optional": true'
            )
        if mask is not None:
            raise CardError(
                f'card.missing_modality.mask_input: {json.dumps(mask)} given, but "learned-token" takes none '
                "(the graph has a <name>_present input per optional input)"
            )
        presence = presence_inputs(card)
        for i, name in enumerate(names):
            if name in presence:
                j = names.index(optional[presence.index(name)])
                raise CardError(
                    f"card.inputs[{i}].name: {json.dumps(name)} is the name of the presence input of "
                    f'inputs[{j}] under "learned-token"'
                )

    cal = card.get("calibration")
    if cal:
        labels = set(card["labels"])
        _check_per_class(cal, labels, "card.calibration")
        subsets = cal.get("subsets", [])
        if subsets and not optional:
            raise CardError("card.calibration.subsets: given, but no input is optional: every frame has every input")
        for k, subset in enumerate(subsets):
            field = f"card.calibration.subsets[{k}]"
            for m, name in enumerate(subset["present"]):
                if name not in names:
                    raise CardError(
                        f"{field}.present[{m}]: {json.dumps(name)} is not one of the card's inputs ({', '.join(names)})"
                    )
            for inp in card["inputs"]:
                if not inp.get("optional", False) and inp["name"] not in subset["present"]:
                    raise CardError(f"{field}.present: lacks {json.dumps(inp['name'])}, which is not optional")
            if len(subset["present"]) == len(names):
                raise CardError(f"{field}.present: lists every input: that is the top-level calibration")
            for j, other in enumerate(subsets[:k]):
                if set(other["present"]) == set(subset["present"]):
                    raise CardError(f"{field}.present: the same inputs as subsets[{j}]")
            _check_per_class(subset, labels, field)


def _check_per_class(cal: dict, labels: set, field: str) -> None:
    for key in cal["accept"].get("per_class", {}):
        if key not in labels:
            raise CardError(f"{field}.accept.per_class.{key}: {key!r} is not a label")


def presence_inputs(card: dict) -> list[str]:
    """The presence inputs the runtime feeds besides the card's inputs, in card input order:
    ``<name>_present`` (float32, shape ``[N]``, N the batch dimension of the input's shape; 1.0
    when the input is present, 0.0 when missing) for each optional input under
    ``missing_modality.policy`` ``"learned-token"``; none otherwise."""
    if (card.get("missing_modality") or {}).get("policy") != "learned-token":
        return []
    return [f"{inp['name']}_present" for inp in card["inputs"] if inp.get("optional", False)]


def _dims(value_info) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def check_against_graph(card: dict, model: onnx.ModelProto) -> None:
    """Check ``card`` against the graph's inputs and outputs (CardError on mismatch)."""
    outputs = {o.name: o for o in model.graph.output}
    if card["output"] not in outputs:
        raise CardError(f"card.output: graph has no output {card['output']!r} (outputs: {sorted(outputs)})")
    dims = _dims(outputs[card["output"]])
    if dims and dims[-1] is not None and dims[-1] != len(card["labels"]):
        raise CardError(f"card.labels: {len(card['labels'])} labels but output {card['output']!r} has width {dims[-1]}")
    init = {t.name for t in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in init}
    for i, inp in enumerate(card["inputs"]):
        if inp["name"] not in inputs:
            raise CardError(f"card.inputs[{i}].name: graph has no input {inp['name']!r} (inputs: {sorted(inputs)})")
        gd = _dims(inputs[inp["name"]])
        if len(gd) != len(inp["shape"]) or any(g is not None and g != s for g, s in zip(gd, inp["shape"], strict=True)):
            raise CardError(f"card.inputs[{i}].shape: {inp['shape']} does not match the graph input {gd}")
    optional = [(i, inp) for i, inp in enumerate(card["inputs"]) if inp.get("optional", False)]
    for (i, inp), name in zip(optional, presence_inputs(card), strict=False):
        if name not in inputs:
            raise CardError(f"card.inputs[{i}].optional: the graph has no presence input {json.dumps(name)}")
        gd = _dims(inputs[name])
        elem = inputs[name].type.tensor_type.elem_type
        batch = inp["shape"][0]
        if elem != onnx.TensorProto.FLOAT or len(gd) != 1 or gd[0] not in (None, batch):
            raise CardError(
                f"card.inputs[{i}].optional: the graph input {json.dumps(name)} is {gd}, expected float32 [{batch}]"
            )


def write_card(onnx_path, card: dict, out_path=None) -> None:
    """Validate ``card`` and store it in the model at ``onnx_path``.

    Writes to ``out_path`` (default: in place). Any existing ``edge_kd.card`` entry is
    replaced; other metadata is kept.
    """
    validate_card(card)
    model = onnx.load(str(onnx_path))
    check_against_graph(card, model)
    text = _card_json(card)
    kept = [p for p in model.metadata_props if p.key != CARD_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=CARD_KEY, value=text)
    onnx.save(model, str(out_path if out_path is not None else onnx_path))


def read_card(onnx_path, validate: bool = False) -> dict | None:
    """The card stored in the model, or None when there is none.

    With ``validate=True`` the card is also checked (:func:`validate_card`).
    """
    model = onnx.load(str(onnx_path), load_external_data=False)
    for p in model.metadata_props:
        if p.key == CARD_KEY:
            _check_json_size(len(p.value.encode("utf-8")))
            try:
                card = json.loads(p.value)
            except json.JSONDecodeError as e:
                raise CardError(f"card: metadata {CARD_KEY!r} is not valid JSON: {e}") from e
            if validate:
                validate_card(card)
            return card
    return None
