"""The Python card checks agree with the Rust parser on the shared test vectors in
tests/fixtures/cards (see its README)."""

import json
from pathlib import Path

import jsonschema
import pytest

from edgekd_train.card import CardError, validate_card

CARDS = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "cards"
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "card.schema.json").read_text())
# The start of the error both parsers give for each rejected vector.
EXPECTED = json.loads((CARDS / "expected_errors.json").read_text())


def vectors(kind):
    files = sorted((CARDS / kind).glob("*.json"))
    assert files, f"no vectors in {kind}"
    return files


@pytest.mark.parametrize("path", vectors("valid"), ids=lambda p: p.stem)
def test_valid(path):
    card = json.loads(path.read_text())
    jsonschema.validate(card, SCHEMA)
    validate_card(card)


@pytest.mark.parametrize("path", vectors("invalid") + vectors("semantic"), ids=lambda p: p.stem)
def test_rejected_with_the_field_named(path):
    card = json.loads(path.read_text())
    with pytest.raises(CardError) as info:
        validate_card(card)
    want = EXPECTED[f"{path.parent.name}/{path.name}"]
    assert str(info.value).startswith(want), str(info.value)[:300]
