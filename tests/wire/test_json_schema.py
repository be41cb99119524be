"""json_schema: a JSON Schema that agrees with from_dict, checked by an independent validator.

- the schema is a valid draft 2020-12 schema and accepts everything `to_dict` writes;
- whatever `from_dict` accepts, the schema accepts (mutated objects, drawn at random), and a
  list of bad inputs is refused by both;
- where JSON Schema cannot say what `from_dict` checks, the gap is the one the docstring
  lists (pinned, so the list stays true);
- its example is the example document, read by `from_dict`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.wire.test_codecs import CLASSES
from tests.wire.test_dicts import shaped_objects, typed_objects
from tests.wire.test_payloads import EVERYTHING, Everything, Order, sample_everything
from xml_pipeline import (
    PayloadTypeError,
    SchemaViolation,
    from_dict,
    from_xml,
    json_schema,
    payload,
    payload_spec,
    to_dict,
)


def validator(cls: type) -> jsonschema.Draft202012Validator:
    """A validator of ``cls``'s schema that also checks formats (``date``)."""
    schema = json_schema(cls)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def schema_accepts(cls: type, data: object) -> bool:
    return validator(cls).is_valid(data)


def from_dict_accepts(cls: type, data: Any) -> bool:
    try:
        from_dict(cls, data)
    except SchemaViolation:
        return False
    return True


# -- the schema ----------------------------------------------------------------------------------


def test_order_schema_says_keys_types_and_what_is_required() -> None:
    schema = json_schema(Order)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "Order"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["id", "ship_to"]  # tags is a list, note Optional
    props = schema["properties"]
    assert props["id"] == {"type": "integer"}
    assert props["tags"]["type"] == "array"
    assert props["ship_to"]["required"] == ["city"]
    assert props["ship_to"]["additionalProperties"] is False
    assert props["note"]["anyOf"][1] == {"type": "null"}


def test_every_kind_of_field_has_the_schema_of_its_json_form() -> None:
    props = json_schema(Everything)["properties"]
    assert props["day"]["format"] == "date"
    assert "format" not in props["at"]  # RFC 3339 date-time would require a time zone
    assert props["color"] == {"enum": ["red", " <&]]>\r odd "]}
    assert props["level"] == {"enum": [1, 20]}
    assert {"enum": ["INF", "-INF", "NaN"]} in props["ratio"]["anyOf"]
    assert {"type": "integer"} in props["amount"]["anyOf"]
    assert props["defaulted"]["default"] == 5
    assert "default" not in props["stamps"]
    assert json_schema(Everything)["description"] == "One field of every supported kind."


def test_a_default_is_given_only_where_a_missing_key_takes_it() -> None:
    @payload
    @dataclass
    class Defaults:
        when: date = date(2024, 1, 31)
        note: str | None = "not when missing: a missing Optional reads as None"
        tags: list[str] = field(default_factory=list)

    props = json_schema(Defaults)["properties"]
    assert props["when"]["default"] == "2024-01-31"
    assert "default" not in props["note"] and "default" not in props["tags"]
    assert "required" not in json_schema(Defaults)


def test_the_schema_is_new_each_time_so_changing_it_changes_nothing_else() -> None:
    first = json_schema(Everything)
    pristine = copy.deepcopy(first)
    first["properties"]["amount"]["anyOf"][0]["pattern"] = "changed"
    first["properties"]["day"]["pattern"] = "changed"
    assert json_schema(Everything) == pristine


def test_a_class_that_is_not_a_payload_is_refused() -> None:
    with pytest.raises(PayloadTypeError, match="is not a payload class"):
        json_schema(dict)


@pytest.mark.parametrize("cls", [Everything, Order, *CLASSES.values()], ids=lambda c: c.__name__)
def test_the_example_is_the_example_document_and_from_dict_reads_it(cls: type) -> None:
    (example,) = json_schema(cls)["examples"]
    assert example == to_dict(from_xml(cls, payload_spec(cls).example()))
    assert json.loads(json.dumps(example, allow_nan=False)) == example
    assert from_dict(cls, example) is not None
    assert schema_accepts(cls, example)


# -- the schema accepts what to_dict writes ------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(EVERYTHING)
def test_the_schema_accepts_everything_to_dict_writes(obj: Everything) -> None:
    assert validator(Everything).is_valid(to_dict(obj))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(typed_objects(), shaped_objects()))
def test_the_schema_of_any_class_accepts_what_to_dict_writes_for_it(obj: Any) -> None:
    try:
        data = to_dict(obj)
    except SchemaViolation:
        return
    errors = list(validator(type(obj)).iter_errors(data))
    assert errors == [], (data, errors[0].message)


# -- the schema refuses what from_dict refuses ---------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
    | st.sampled_from(["9.99", "-0", "2024-01-31", "2024-01-31T12:00:00Z", "INF", "red", "NaN"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


def _mutated(data: Any, draw: st.DrawFn) -> Any:
    """``data`` with one value replaced by any JSON value, or one key added or removed."""
    if isinstance(data, dict) and data:
        key = draw(st.sampled_from(sorted(data)))
        action = draw(st.sampled_from(["replace", "descend", "drop", "add"]))
        if action == "drop":
            return {k: v for k, v in data.items() if k != key}
        if action == "add":
            return {**data, draw(st.text(max_size=4)): draw(JSON_VALUES)}
        new = _mutated(data[key], draw) if action == "descend" else draw(JSON_VALUES)
        return {**data, key: new}
    if isinstance(data, list) and data:
        i = draw(st.integers(0, len(data) - 1))
        return [*data[:i], _mutated(data[i], draw), *data[i + 1 :]]
    return draw(JSON_VALUES)


@st.composite
def mutations(draw: st.DrawFn) -> tuple[type, Any]:
    obj = draw(st.one_of(EVERYTHING, typed_objects(), shaped_objects()))
    try:
        data = to_dict(obj)
    except SchemaViolation:
        data = {}
    return type(obj), _mutated(data, draw)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_what_from_dict_accepts_the_schema_accepts(case: tuple[type, Any]) -> None:
    cls, data = case
    accepted = from_dict_accepts(cls, data)
    event("from_dict accepts" if accepted else "from_dict refuses")
    if accepted:
        errors = list(validator(cls).iter_errors(data))
        assert errors == [], (data, errors[0].message)


BAD = [
    {"tgas": []},  # an unknown key
    {"number": None},  # null for a required field
    {"number": True},  # a boolean for an integer
    {"number": "12"},  # a string for an integer
    {"number": 1.5},
    {"ratio": "1.5"},
    {"ratio": "inf"},  # not xs:double's spelling
    {"flag": 1},
    {"flag": "true"},
    {"amount": 9.99},  # a float for a Decimal
    {"amount": "1e3"},
    {"amount": "NaN"},
    {"amount": " 1.5"},
    {"amount": "\u0661"},
    {"at": "2024-01-31 12:00:00"},
    {"at": "2024-01-31T12:00"},
    {"at": "20240131T120000"},
    {"at": "2024-01-31T12:00:00+14:30"},
    {"day": "20240131"},
    {"day": "2024-1-31"},
    {"day": "2024-02-30"},  # refused by format: date
    {"day": "2024-01-31Z"},  # refused by format: date (RFC 3339 full-date has no zone)
    {"color": "RED"},
    {"color": 1},
    {"level": "1"},
    {"level": 2},
    {"text": "a\x00b"},
    {"text": "\ufffe"},
    {"text": 5},
    {"texts": "abc"},
    {"texts": None},
    {"numbers": [1, None]},
    {"inner": "x"},
    {"inner": {"label": "a", "x": 1}},
    {"inner": {}},
    {"inners": [{"label": "a"}, {"label": "b", "day": "x"}]},
    {"maybe_inner": []},
    {"defaulted": None},
]


@pytest.mark.parametrize("changes", BAD, ids=lambda c: json.dumps(c, ensure_ascii=True)[:40])
def test_bad_input_is_refused_by_both_from_dict_and_the_schema(changes: dict[str, Any]) -> None:
    data = {**to_dict(sample_everything()), **changes}
    assert not from_dict_accepts(Everything, data)
    assert not schema_accepts(Everything, data)


def test_a_missing_required_key_is_refused_by_both() -> None:
    data = to_dict(sample_everything())
    for key in json_schema(Everything)["required"]:
        partial = {k: v for k, v in data.items() if k != key}
        assert not from_dict_accepts(Everything, partial), key
        assert not schema_accepts(Everything, partial), key


# the gaps the docstring of json_schema lists: the schema accepts, from_dict refuses
GAPS = [
    {"number": 12.0},  # 1.0 is an integer in JSON Schema's data model
    {"amount": 12.0},
    {"level": 20.0},
    {"at": "10000-01-01T00:00:00"},  # a year Python cannot hold; no format: date-time for
    {"at": "2024-02-30T12:00:00"},  # times, since RFC 3339's would require a zone
    {"number": 10**5000},  # more digits than Python converts
    {"amount": "1" * 4301},
]


@pytest.mark.parametrize("changes", GAPS, ids=lambda c: next(iter(c)))
def test_what_the_schema_cannot_say_is_exactly_the_documented_gap(changes: dict[str, Any]) -> None:
    data = {**to_dict(sample_everything()), **changes}
    assert schema_accepts(Everything, data)
    assert not from_dict_accepts(Everything, data)


def test_dates_python_cannot_hold_are_refused_by_the_date_format_only() -> None:
    data = {**to_dict(sample_everything()), "day": "2024-02-30"}
    assert not schema_accepts(Everything, data)
    assert jsonschema.Draft202012Validator(json_schema(Everything)).is_valid(data)
    assert not from_dict_accepts(Everything, data)


def test_the_example_is_built_from_the_shape_without_calling_the_constructor() -> None:
    @payload
    @dataclass
    class Picky:
        name: str

        def __post_init__(self) -> None:
            if self.name == "text":
                raise ValueError("not a real name")

    assert json_schema(Picky)["examples"] == [{"name": "text"}]
