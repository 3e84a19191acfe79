"""dvic_core/schema.py on its own: what a declaration accepts, refuses (code, message), returns and
describes, and that the compiled checks are made of the declaration only."""

from __future__ import annotations

from typing import Any

import pytest

from dvic_core.schema import (
    OMIT,
    Array,
    Base64,
    Bool,
    Const,
    Csv,
    Enum,
    Int,
    Json,
    Number,
    Object,
    Query,
    SchemaError,
    Str,
)


def refused(schema: Object, value: Any) -> SchemaError:
    with pytest.raises(SchemaError) as info:
        schema.parse(value)
    return info.value


def test_required_optional_nullable_and_defaults() -> None:
    schema = Object({
        "must": Int(required=True),
        "plain": Str(default="d"),
        "maybe": Str(nullable=True, default="n"),
        "left_out": Json(default=OMIT),
        "fresh": Json(json_kind="object", default={}),
    })
    assert schema.parse({"must": 1}) == {"must": 1, "plain": "d", "maybe": "n", "fresh": {}}
    assert schema.parse({"must": 1, "maybe": None, "left_out": [1]})["maybe"] == "n"
    assert schema.parse({"must": 1, "left_out": [1]})["left_out"] == [1]
    one, two = schema.parse({"must": 1}), schema.parse({"must": 1})
    assert one["fresh"] is not two["fresh"]  # a {} default is a new dict each time
    assert refused(schema, {}).message == "must: expected an integer"
    assert refused(schema, {"must": 1, "plain": None}).message == "plain: expected a string"  # null is not "absent"
    assert refused(schema, {"must": True}).message == "must: expected an integer"  # a boolean is not an integer
    assert refused(schema, [1]).message == "expected an object"
    with pytest.raises(ValueError, match="shared"):
        Json(default={"a": 1})


def test_codes_messages_and_what_covers_the_items() -> None:
    schema = Object({
        "argv": Array(Str(), min_items=1, code="bad_command", expects="expected a non-empty list of strings"),
        "name": Str(pattern=r"[a-z]+", code="bad_name", message="name: lower-case letters"),
        "plain": Array(Str()),
    })
    for argv in ("x", [], ["ok", 5]):
        error = refused(schema, {"argv": argv})
        assert (error.code, error.message) == ("bad_command", "argv: expected a non-empty list of strings")
    error = refused(schema, {"name": "Bob"})
    assert (error.code, error.message) == ("bad_name", "name: lower-case letters")
    error = refused(schema, {"plain": ["a", 5]})
    assert (error.code, error.message) == (None, "plain[1]: expected a string")


def test_nested_places_and_checks() -> None:
    def ordered(gap: dict[str, Any]) -> None:
        if gap["last"] < gap["first"]:
            raise SchemaError("gap: last before first", "bad_gap")

    line = Object({"seq": Int(min=1, required=True)})
    schema = Object({"lines": Array(line, max_items=2, too_many="more than 2 lines"),
                     "gap": Object({"first": Int(required=True), "last": Int(required=True)}, checks=[ordered])})
    assert refused(schema, {"lines": [{"seq": 1}, {"seq": 0}]}).message == "lines[1].seq: expected an integer >= 1"
    assert refused(schema, {"lines": [{}] * 3}).message == "lines: more than 2 lines"
    assert refused(schema, {"lines": [5]}).message == "lines[0]: expected an object"
    assert refused(schema, {"gap": {"first": 1}}).message == "gap.last: expected an integer"
    assert refused(schema, {"gap": {"first": 3, "last": 2}}).code == "bad_gap"
    assert schema.parse({"gap": {"first": 2, "last": 3}})["gap"] == {"first": 2, "last": 3}


def test_numbers_are_finite_floats_within_bounds() -> None:
    schema = Object({"t": Number(above=0, max=10), "x": Number(), "raw": Int(min=1, max=1, message="v{raw}")})
    assert schema.parse({"t": 3}) == {"t": 3.0, "x": None, "raw": None}
    assert type(schema.parse({"t": 3})["t"]) is float
    for bad in (0, 10.5, float("nan"), float("inf"), True, "3"):
        assert refused(schema, {"t": bad}).message == "t: expected a number more than 0 and at most 10"
    assert refused(schema, {"x": 2**64}).message == "x: expected a finite number"  # float() would overflow
    assert refused(schema, {"raw": 7}).message == "v7"


def test_strings_cut_to_bytes_and_mark_it() -> None:
    schema = Object({"msg": Str(max_bytes=4, marks="cut"), "cut": Bool(coerce=True, default=False)})
    assert schema.parse({"msg": "abcdef"}) == {"msg": "abcd", "cut": True}
    assert schema.parse({"msg": "ab"}) == {"msg": "ab", "cut": False}
    assert schema.parse({"msg": "é" * 3}) == {"msg": "éé", "cut": True}  # never half a character
    assert schema.parse({"msg": "ab", "cut": 1}) == {"msg": "ab", "cut": True}


def test_enums_base64_and_constants() -> None:
    schema = Object({"type": Const("x"), "level": Enum(("INFO", "ERROR"), ignore_case=True), "data": Base64(max_bytes=3)})
    assert schema.parse({"type": "ignored", "level": "info", "data": "YWJj"}) == {
        "type": "x", "level": "INFO", "data": b"abc"}
    assert refused(schema, {"level": ["INFO"]}).message == "level: expected one of INFO, ERROR"
    assert refused(schema, {"data": "YW!j"}).message == "data: not valid base64"
    assert refused(schema, {"data": "YWJjZGVmZ2hpams="}).message == "data: expected base64 text of at most 3 decoded bytes"


def test_query_text() -> None:
    schema = Query({
        "limit": Int(min=1, max=1000, default=100), "since": Number(min=0, unit="Unix seconds"),
        "group": Str(blank_is_value=True), "node": Csv(Str()), "state": Enum(("on", "off")),
    })
    assert schema.parse({}) == {"limit": 100, "since": None, "group": None, "node": None, "state": None}
    assert schema.parse({"limit": "7", "since": "1.5", "group": "", "node": "a,,b", "state": ""}) == {
        "limit": 7, "since": 1.5, "group": "", "node": ["a", "b"], "state": None}
    assert refused(schema, {"limit": "²"}).message == "limit: expected an integer from 1 to 1000"
    assert refused(schema, {"limit": "01000"}).message == "limit: expected an integer from 1 to 1000"
    assert refused(schema, {"since": "soon"}).message == "since: expected a number (Unix seconds), got 'soon'"
    assert refused(schema, {"since": "-inf"}).message == "since: expected a finite, non-negative number (Unix seconds)"
    with pytest.raises(TypeError):
        Query({"flag": Bool()}).parse({})


def test_openapi_descriptions() -> None:
    assert Int(min=1, max=5, default=2, doc="d").openapi() == {
        "type": "integer", "minimum": 1, "maximum": 5, "default": 2, "description": "d"}
    assert Str(nullable=True, max_len=3).openapi() == {"type": ["string", "null"], "maxLength": 3}
    assert Array(Enum(("a", "b")), min_items=1).openapi() == {
        "type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "minItems": 1}
    assert Object({"a": Bool(required=True), "b": Const("x")}).openapi() == {
        "type": "object", "properties": {"a": {"type": "boolean"}, "b": {"const": "x"}}, "required": ["a"]}
    assert Query({"node": Csv(Str())}).parameters() == [{
        "name": "node", "in": "query", "required": False, "style": "form", "explode": False,
        "schema": {"type": "array", "items": {"type": "string"}, "x-dvic-style": "comma-separated"}}]


def test_the_compiled_source_is_made_of_the_declaration_only() -> None:
    schema = Object({"name": Str(max_len=8), "n": Int()})
    hostile = {"name": "x'); import os; ('", "__import__('os')": 1}
    with pytest.raises(SchemaError, match="name: longer than 8 characters"):
        schema.parse(hostile)  # the first parse compiles: from the declaration, not this value
    assert schema.source.startswith("def parse_object(value, where, key):")
    assert "import os" not in schema.source and "__import__" not in schema.source
