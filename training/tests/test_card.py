"""Card writer/reader tests (no torch)."""

import copy
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd_train.card import (
    CARD_KEY,
    MAX_CARD_JSON_BYTES,
    CardError,
    find_schema_path,
    load_schema,
    presence_inputs,
    read_card,
    validate_card,
    write_card,
)

LABELS = ["a", "b", "c"]


def tiny_onnx(path, width=3, in_name="image", out_name="logits"):
    """image [1,1,4,4] -> Flatten -> Gemm -> logits [1,width]."""
    w = numpy_helper.from_array(np.ones((16, width), np.float32), "w")
    b = numpy_helper.from_array(np.zeros((width,), np.float32), "b")
    nodes = [
        helper.make_node("Flatten", [in_name], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w", "b"], [out_name]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [1, width])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def good_card():
    return {
        "schema": 1,
        "name": "tiny",
        "task": "classification",
        "labels": list(LABELS),
        "inputs": [
            {
                "name": "image",
                "modality": "camera",
                "shape": [1, 1, 4, 4],
                "layout": "NCHW",
                "color": "gray",
                "resize": "stretch",
                "scale": 1 / 255,
                "mean": [0.5],
                "std": [0.25],
                "optional": False,
            }
        ],
        "missing_modality": {"policy": "zero-fill", "mask_input": None},
        "output": "logits",
        "calibration": {
            "temperature": 1.5,
            "ece": {"before": 0.05, "after": 0.01},
            "accept": {"default": 0.9, "per_class": {"a": 0.95, "c": None}},
            "target": {"max_error_among_accepted": 0.01, "coverage_on_calibration_set": 0.8},
            "notes": ["c: too few samples"],
        },
        "provenance": {"method": "fixture", "teachers": [], "dataset": "none", "metrics": {"x": 1.0}},
    }


def test_schema_loads():
    assert find_schema_path().name == "card.schema.json"
    schema = load_schema()
    assert schema["properties"]["schema"]["const"] == 1


def test_round_trip(tmp_path):
    path = tiny_onnx(tmp_path / "m.onnx")
    assert read_card(path) is None
    card = good_card()
    write_card(path, card)
    assert read_card(path, validate=True) == card
    # Rewriting replaces the entry rather than adding a second one.
    card2 = copy.deepcopy(card)
    card2["name"] = "tiny2"
    write_card(path, card2)
    model = onnx.load(str(path))
    entries = [p for p in model.metadata_props if p.key == CARD_KEY]
    assert len(entries) == 1 and json.loads(entries[0].value)["name"] == "tiny2"
    onnx.checker.check_model(model)


def test_write_to_other_path(tmp_path):
    src = tiny_onnx(tmp_path / "m.onnx")
    dst = tmp_path / "out.onnx"
    write_card(src, good_card(), dst)
    assert read_card(src) is None
    assert read_card(dst) == good_card()


def test_null_calibration_ok():
    card = good_card()
    card["calibration"] = None
    validate_card(card)


def _mutate(fn):
    card = good_card()
    fn(card)
    return card


@pytest.mark.parametrize(
    "mutate, fragments",
    [
        (lambda c: c.__setitem__("colour", "gray"), ["card", "colour"]),
        (lambda c: c.__setitem__("schema", 2), ["card.schema"]),
        (
            lambda c: c["inputs"][0].__setitem__("mean", [0.1, 0.2, 0.3]),
            ["card.inputs[0].mean", "'gray'", "expected 1"],
        ),
        (lambda c: c["inputs"][0].__setitem__("std", [0.1, 0.2]), ["card.inputs[0].std"]),
        (
            lambda c: c["calibration"]["accept"]["per_class"].__setitem__("zebra", 0.5),
            ["card.calibration.accept.per_class.zebra", "not a label"],
        ),
        (lambda c: c["inputs"][0].__setitem__("color", "cmyk"), ["card.inputs[0].color"]),
        (lambda c: c["calibration"].__setitem__("temperature", 0), ["card.calibration.temperature"]),
        (lambda c: c["calibration"]["accept"].__setitem__("default", 1.5), ["card.calibration.accept.default"]),
        (lambda c: c.pop("labels"), ["card", "labels"]),
    ],
)
def test_rejected(mutate, fragments):
    with pytest.raises(CardError) as e:
        validate_card(_mutate(mutate))
    for f in fragments:
        assert f in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda c: c.__setitem__("labels", [str(i) for i in range(100_001)]),
            "card.labels: 100001 items, more than the 100000 a card allows",
        ),
        (lambda c: c.__setitem__("inputs", c["inputs"] * 65), "card.inputs: 65 items, more than the 64 a card allows"),
        (lambda c: c.__setitem__("name", "x" * 1025), "card.name: 1025 characters, more than the 1024 a card allows"),
        (lambda c: c["labels"].__setitem__(1, "x" * 1025), "card.labels[1]: 1025 characters, more than the 1024"),
        (lambda c: c["inputs"][0].__setitem__("name", "x" * 1025), "card.inputs[0].name: 1025 characters"),
        (lambda c: c.__setitem__("output", "x" * 1025), "card.output: 1025 characters"),
        (
            lambda c: c["calibration"].__setitem__("notes", ["x" * 4097]),
            "card.calibration.notes[0]: 4097 characters, more than the 4096 a card allows",
        ),
        (lambda c: c["provenance"].__setitem__("command", "x" * 4097), "card.provenance.command: 4097 characters"),
    ],
    ids=["labels", "inputs", "name", "label", "input-name", "output", "note", "command"],
)
def test_one_past_a_bound_is_refused_naming_the_bound(mutate, message):
    with pytest.raises(CardError) as e:
        validate_card(_mutate(mutate))
    assert str(e.value).startswith(message), str(e.value)[:300]


def test_a_card_at_the_bounds_is_accepted():
    card = good_card()
    card["labels"] = [str(i) for i in range(100_000)]
    card["calibration"]["accept"]["per_class"] = {}
    card["name"] = "é" * 1024  # characters are counted, not bytes
    card["calibration"]["notes"] = ["n" * 4096]
    validate_card(card)


def _over_the_json_bound():
    """A card that breaks no other bound but takes more than MAX_CARD_JSON_BYTES as JSON."""
    card = good_card()
    card["labels"] = [f"{i:05d}" + "x" * 1000 for i in range(MAX_CARD_JSON_BYTES // 1000)]
    card["calibration"]["accept"]["per_class"] = {}
    return card


def test_a_card_over_the_json_bound_is_neither_written_nor_read(tmp_path):
    card = _over_the_json_bound()
    size = len(json.dumps(card, ensure_ascii=False).encode())
    message = f"card: {size} bytes of JSON, more than the {MAX_CARD_JSON_BYTES} (4 MiB) a card may take"
    path = tiny_onnx(tmp_path / "m.onnx", width=len(card["labels"]))
    with pytest.raises(CardError) as e:
        write_card(path, card)
    assert str(e.value) == message
    assert read_card(path) is None

    # A card stored by something other than write_card is refused when read.
    model = onnx.load(str(path))
    model.metadata_props.add(key=CARD_KEY, value=json.dumps(card, ensure_ascii=False))
    onnx.save(model, str(path))
    with pytest.raises(CardError) as e:
        read_card(path)
    assert str(e.value) == message


def test_the_json_bound_is_the_one_the_schema_states():
    assert f"at most {MAX_CARD_JSON_BYTES} bytes" in load_schema()["description"]


def test_rgb_shape_mismatch():
    card = good_card()
    card["inputs"][0].update(color="rgb", mean=[0, 0, 0], std=[1, 1, 1])  # shape[1] is still 1
    with pytest.raises(CardError, match=r"card\.inputs\[0\]\.shape"):
        validate_card(card)


def test_labels_count_vs_output_width(tmp_path):
    path = tiny_onnx(tmp_path / "m.onnx", width=4)
    with pytest.raises(CardError, match=r"card\.labels: 3 labels but output 'logits' has width 4"):
        write_card(path, good_card())
    assert read_card(path) is None


def test_output_name_must_exist(tmp_path):
    path = tiny_onnx(tmp_path / "m.onnx", out_name="probs")
    with pytest.raises(CardError, match=r"card\.output"):
        write_card(path, good_card())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda c: c["inputs"].append(dict(c["inputs"][0], optional=True)),
            'card.inputs[1].name: "image" is already the name of inputs[0]',
        ),
        (
            lambda c: c["missing_modality"].__setitem__("mask_input", "mask"),
            'card.missing_modality.mask_input: "mask" is not one of the card\'s inputs (image)',
        ),
    ],
    ids=["duplicate-input", "mask-not-an-input"],
)
def test_inputs_are_named_once_and_the_mask_names_one(mutate, message):
    with pytest.raises(CardError) as e:
        validate_card(_mutate(mutate))
    assert str(e.value) == message


def test_input_name_must_exist(tmp_path):
    path = tiny_onnx(tmp_path / "m.onnx", in_name="x")
    with pytest.raises(CardError, match=r"card\.inputs\[0\]\.name"):
        write_card(path, good_card())


def _learned_token_card():
    card = good_card()
    card["inputs"][0]["optional"] = True
    card["missing_modality"] = {"policy": "learned-token", "mask_input": None}
    return card


def _with_presence_input(path, dims, elem=TensorProto.FLOAT):
    model = onnx.load(str(path))
    model.graph.input.append(helper.make_tensor_value_info("image_present", elem, dims))
    onnx.save(model, str(path))
    return path


def test_learned_token_needs_the_presence_input_in_the_graph(tmp_path):
    card = _learned_token_card()
    assert presence_inputs(card) == ["image_present"]
    assert presence_inputs(good_card()) == []
    with pytest.raises(CardError) as e:
        write_card(tiny_onnx(tmp_path / "none.onnx"), card)
    assert str(e.value) == 'card.inputs[0].optional: the graph has no presence input "image_present"'
    with pytest.raises(CardError, match=r'"image_present" is \[1, 1\], expected float32 \[1\]'):
        write_card(_with_presence_input(tiny_onnx(tmp_path / "2d.onnx"), [1, 1]), card)
    with pytest.raises(CardError, match="expected float32"):
        write_card(_with_presence_input(tiny_onnx(tmp_path / "int.onnx"), [1], TensorProto.INT64), card)
    path = _with_presence_input(tiny_onnx(tmp_path / "ok.onnx"), ["N"])
    write_card(path, card)
    assert read_card(path, validate=True) == card


def test_card_module_does_not_import_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, edgekd_train.card; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
