"""Schemas of what crosses the network, declared once: query parameters, request bodies, node messages.

A schema is a tree of small objects (Str, Int, Number, Bool, Enum, Const, Json, Base64, Array,
Csv, Object, Query, Raw, Stream). One declaration serves twice:
- `parse` checks a decoded JSON value (a Query: a query string's text values) and returns it
  cleaned, or raises SchemaError with the code and message the sender is shown;
- `openapi` describes it (OpenAPI 3.1, i.e. JSON Schema), so the served API document is made of
  the very objects that check the requests.

An Object (and a Query) is compiled, the first time it parses, into one plain Python function
that does its fields' checks in line, the way `dataclasses` writes an `__init__`: the node
websocket validates every log line a fleet sends on the server's one event loop, and a loop that
calls one check object per field costs twice as much (bench/node_frames.py). The generated text is
kept in `Object.source`. Nothing of a parsed value ever reaches the generated text: it is made
from the declarations only, with every name and constant written by `repr`.

A failure's message is "<where>: <what was expected>", where is the field's place (`lines[3].seq`),
unless a field gives its own `message` (the whole text) or `expects` (the part after the colon);
either covers the failures of the items inside the field too. A field may name the error `code`
the sender gets; otherwise SchemaError.code is None and the caller gives its own (bad_query,
bad_field, bad_message). A field is optional unless `required`; one that is not given gets its
`default` (OMIT: it is left out of the result). JSON null is a value of the wrong type unless the
field is `nullable`, when it counts as not given.

Standard library only and cheap to import (dvic_core's rule): no typing or dataclasses at run time.
"""

from __future__ import annotations

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (see tui/cmds/run.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any

    Parser = Callable[[Any, str, Any], Any]
    Check = Callable[[dict[str, Any]], None]


class SchemaError(ValueError):
    """A value that does not fit its schema; `code` None means the caller's default code."""

    def __init__(self, message: str, code: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


OMIT: Any = _Omit()  # a default that leaves a field that was not given out of the result
_MISSING = object()


def where_is(where: str, key: str | int | None) -> str:
    """The place of `key` inside `where`: `lines[3]`, `logs.gap`, `seq`."""
    if key is None:
        return where
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def given(**values: Any) -> dict[str, Any]:
    """The values that are set (not None): a document's optional keys."""
    return {k: v for k, v in values.items() if v is not None}


def _given(out: dict[str, Any], **values: Any) -> dict[str, Any]:
    """`out` with the values that are not None (an OpenAPI description's optional keywords)."""
    out.update(given(**values))
    return out


def _say(where: str, text: str) -> str:
    return f"{where}: {text}" if where else text


def clip_utf8(text: str, limit_bytes: int) -> tuple[str, bool]:
    """Valid UTF-8 (lone surrogates replaced) of at most limit_bytes; True when it was cut."""
    if len(text) <= limit_bytes and text.isascii():
        return text, False  # the common case, without encoding the text twice
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit_bytes:
        return raw.decode("utf-8"), False
    return raw[:limit_bytes].decode("utf-8", "ignore"), True


class Schema:
    """What one value must be, and what to do when it is not given."""

    json_type = ""
    # Its first check refuses None with expected()'s text: a required field needs no test of its own
    # for being absent (one test less per field on the hot path).
    refuses_none = True

    def __init__(self, *, required: bool = False, default: Any = None, nullable: bool = False,
                 code: str | None = None, expects: str | None = None, message: str | None = None,
                 doc: str = "") -> None:
        if isinstance(default, dict | list) and default:
            raise ValueError("a default is shared by every parse: only an empty {} or [] may be mutable")
        self.required = required
        self.default = default
        self.nullable = nullable
        self.code = code
        self.expects = expects
        self.message = message
        self.doc = doc

    def expected(self) -> str:
        """The failure text when the value is not what it must be (or a required one is missing)."""
        return "expected a value"

    def emit(self, g: _Gen, v: str, loc: str) -> None:
        """Write the lines that check JSON value `v` (a local name) and rebind it to the clean value.

        `loc` is an expression for the value's place, evaluated only when a check fails."""
        raise NotImplementedError

    def emit_text(self, g: _Gen, v: str, loc: str) -> None:
        """The same for the text of a query parameter."""
        raise TypeError(f"{type(self).__name__} cannot be a query parameter")

    def openapi(self) -> dict[str, Any]:
        out = self.describe()
        if self.nullable and "type" in out:
            out["type"] = [out["type"], "null"]
        if self.default is not None and self.default is not OMIT:
            out["default"] = self.default
        if self.doc:
            out["description"] = self.doc
        return out

    def describe(self) -> dict[str, Any]:
        return {"type": self.json_type} if self.json_type else {}


class Str(Schema):
    """A string: lengths in characters, a `pattern` it must match whole, or a UTF-8 size it is cut to."""

    json_type = "string"

    def __init__(self, *, min_len: int = 0, max_len: int | None = None, pattern: str | None = None,
                 nonblank: bool = False, max_bytes: int | None = None, marks: str | None = None,
                 blank_is_value: bool = False, **options: Any) -> None:
        super().__init__(**options)
        self.min_len, self.max_len = min_len, max_len
        self.pattern = pattern
        self.nonblank = nonblank
        # Cut (never refused) to this many bytes of UTF-8; `marks` names a boolean field set when cut.
        self.max_bytes, self.marks = max_bytes, marks
        # In a query: an empty value is this value, not "not given" (`group=` is the empty group).
        self.blank_is_value = blank_is_value

    def expected(self) -> str:
        return "expected a non-empty string" if self.nonblank else "expected a string"

    def emit(self, g: _Gen, v: str, loc: str) -> None:
        g.check(f"type({v}) is not str", self, loc, self.expected())
        self.emit_text(g, v, loc)

    def emit_text(self, g: _Gen, v: str, loc: str) -> None:
        if self.max_len is not None:
            g.check(f"len({v}) > {self.max_len}", self, loc, f"longer than {self.max_len} characters")
        if self.min_len:
            g.check(f"len({v}) < {self.min_len}", self, loc, f"shorter than {self.min_len} characters")
        if self.nonblank:
            g.check(f"not {v}.strip()", self, loc, self.expected())
        if self.pattern is not None:
            import re

            g.check(f"{g.const(re.compile(self.pattern))}.fullmatch({v}) is None", self, loc,
                    f"expected text matching {self.pattern}")
        if self.max_bytes is not None:
            g.line(f"if len({v}) > {self.max_bytes} or not {v}.isascii():")
            g.line(f"    {v}, _cut = _clip({v}, {self.max_bytes})")
            if self.marks is not None:
                g.line(f"    if _cut: {g.mark(self.marks)} = True")

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string"}
        if self.min_len or self.nonblank:
            out["minLength"] = max(self.min_len, 1 if self.nonblank else 0)
        if self.max_len is not None:
            out["maxLength"] = self.max_len
        if self.pattern is not None:
            out["pattern"] = f"^{self.pattern}$"
        if self.max_bytes is not None:
            out["x-dvic-cut-to-bytes"] = self.max_bytes
        return out


class Int(Schema):
    """An integer (never a boolean); in a query, plain ASCII digits."""

    json_type = "integer"

    def __init__(self, *, min: int | None = None, max: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.min, self.max = min, max

    def expected(self) -> str:
        if self.min is not None and self.max is not None:
            return f"expected an integer from {self.min} to {self.max}"
        return f"expected an integer >= {self.min}" if self.min is not None else "expected an integer"

    def _out_of_range(self, v: str) -> list[str]:
        return ([f"{v} < {self.min}"] if self.min is not None else []) + (
            [f"{v} > {self.max}"] if self.max is not None else [])

    def emit(self, g: _Gen, v: str, loc: str) -> None:
        g.check(" or ".join([f"type({v}) is not int", *self._out_of_range(v)]), self, loc, self.expected(), raw=v)

    def emit_text(self, g: _Gen, v: str, loc: str) -> None:
        if self.min is not None and self.min < 0:
            raise TypeError("a query integer is plain digits: it cannot be negative")
        # `str.isdigit` alone also takes '²', which int() refuses; the length bounds int()'s work.
        digits = len(str(self.max)) if self.max is not None else 12
        g.check(f"not ({v}.isascii() and {v}.isdigit()) or len({v}) > {digits}", self, loc, self.expected())
        g.line(f"{v} = int({v})")
        if self._out_of_range(v):
            g.check(" or ".join(self._out_of_range(v)), self, loc, self.expected())

    def describe(self) -> dict[str, Any]:
        return _given({"type": "integer"}, minimum=self.min, maximum=self.max)


_INT64 = (-(2**63), 2**63 - 1)


class Number(Schema):
    """A finite number, returned as a float; bounds `min`/`max` inclusive, `above` exclusive.

    `unit` names what the number counts, in messages (e.g. "Unix seconds")."""

    json_type = "number"

    def __init__(self, *, min: float | None = None, max: float | None = None, above: float | None = None,
                 unit: str = "", **options: Any) -> None:
        super().__init__(**options)
        self.min, self.max = min, max
        self.above = above
        self.unit = unit

    def _unit(self) -> str:
        return f" ({self.unit})" if self.unit else ""

    def expected(self) -> str:
        if self.min is not None and self.max is not None:
            return f"expected a number from {self.min:g} to {self.max:g}{self._unit()}"
        if self.above is not None and self.max is not None:
            return f"expected a number more than {self.above:g} and at most {self.max:g}{self._unit()}"
        if self.min == 0 and self.max is None:
            return f"expected a finite, non-negative number{self._unit()}"
        return f"expected a finite number{self._unit()}"

    def _in_range(self, v: str) -> str:
        """A condition true for a float in range; comparisons are false for NaN, so only an
        unbounded side needs isfinite."""
        parts = []
        if self.min is not None:
            parts.append(f"{v} >= {self.min!r}")
        if self.above is not None:
            parts.append(f"{v} > {self.above!r}")
        if self.max is not None:
            parts.append(f"{v} <= {self.max!r}")
        if self.max is None or (self.min is None and self.above is None):
            parts.insert(0, f"_isfinite({v})")
        return " and ".join(parts)

    def emit(self, g: _Gen, v: str, loc: str) -> None:
        low, high = _INT64
        g.line(f"if type({v}) is float:")
        g.check(f"not ({self._in_range(v)})", self, loc, self.expected(), indent=1)
        # An integer beyond 64 bits would overflow float(): node log lines skip strictjson's check.
        g.line(f"elif type({v}) is int and {low} <= {v} <= {high}:")
        g.line(f"    {v} = float({v})")
        g.check(f"not ({self._in_range(v)})", self, loc, self.expected(), indent=1)
        g.line("else:")
        g.line(f"    {g.fail(self, loc, self.expected())}")

    def emit_text(self, g: _Gen, v: str, loc: str) -> None:
        g.line("try:")
        g.line(f"    {v} = float({v})")
        g.line("except ValueError:")
        g.line(f"    {g.fail(self, loc, 'expected a number' + self._unit() + ', got {raw}', raw=v)} from None")
        g.check(f"not ({self._in_range(v)})", self, loc, self.expected())

    def describe(self) -> dict[str, Any]:
        return _given({"type": "number"}, minimum=self.min, exclusiveMinimum=self.above, maximum=self.max)


class Bool(Schema):
    """true or false; `coerce`: any value, read as Python's truth (a flag a sender may omit or mistype)."""

    json_type = "boolean"

    def __init__(self, *, coerce: bool = False, **options: Any) -> None:
        super().__init__(**options)
        self.coerce = coerce
        self.refuses_none = not coerce

    def expected(self) -> str:
        return "expected true or false"

    def emit(self, g: _Gen, v: str, loc: str) -> None:
        if self.coerce:
            g.line(f"{v} = bool({v})")
        else:
            g.check(f"type({v}) is not bool", self, loc, self.expected())


class Enum(Schema):
    """One of a few strings; `ignore_case` takes any case of upper-case values and gives them upper."""

    json_type = "string"

    def __init__(self, values: Iterable[str], *, ignore_case: bool = False, **options: Any) -> None:
        super().__init__(**options)
        self.values = tuple(values)
        self.ignore_case = ignore_case

    def expected(self) -> str:
        return f"expected one of {', '.join(self.values)}"

    def emit(self, g: _Gen, v: str, loc: str) -> None:
        if self.ignore_case:
            g.check(f"type({v}) is not str", self, loc, self.expected())
            self.emit_text(g, v, loc)
        else:  # one test on the hot path (a log line's source and level); the type first: a list is unhashable
            g.check(f"type({v}) is not str or {v} not in {g.const(frozenset(self.values))}", self, loc,
                    self.expected())

    def emit_text(self, g: _Gen, v: str, loc: str) -> None:
        if self.ignore_case:
            g.line(f"{v} = {v}.upper()")
        g.check(f"{v} not in {g.const(frozenset(self.values))}", self, loc, self.expected())

    def describe(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.values)}


class Const(Schema):
    """A field the result always has with this value, whatever was sent (a message's `type`)."""

    def __init__(self, value: str, **options: Any) -> None:
        super().__init__(**options)
        self.value = value

    def describe(self) -> dict[str, Any]:
        return {"const": self.value}


class Json(Schema):
    """Any JSON value, kept as sent; `json_kind` "object" asks for an object, `max_chars` bounds its JSON text."""

    def __init__(self, *, json_kind: str = "", max_chars: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        if json_kind not in ("", "object"):
            raise ValueError("json_kind: '' or 'object'")
        self.refuses_none = json_kind == "object"
        self.json_kind = json_kind
        self.max_chars = max_chars

    def expected(self) -> str:
        return "expected an object" if self.json_kind else "expected a value"

    def emit(self, g: _Gen, v: str, loc: str) -> None:
        if self.json_kind:
            g.check(f"type({v}) is not dict", self, loc, self.expected())
        if self.max_chars is not None:
            g.check(f"len(_dumps({v})) > {self.max_chars}", self, loc, f"larger than {self.max_chars // 1024} KiB")

    def describe(self) -> dict[str, Any]:
        return {"type": "object"} if self.json_kind else {}


class Base64(Schema):
    """Bytes sent as base64 text; the result is the decoded bytes."""

    json_type = "string"

    def __init__(self, *, max_bytes: int, **options: Any) -> None:
        super().__init__(**options)
        self.max_bytes = max_bytes

    def expected(self) -> str:
        return f"expected base64 text of at most {self.max_bytes} decoded bytes"

    def emit(self, g: _Gen, v: str, loc: str) -> None:
        g.check(f"type({v}) is not str or len({v}) > {(self.max_bytes * 4) // 3 + 8}", self, loc, self.expected())
        g.line("try:")
        g.line(f"    {v} = _b64decode({v}, validate=True)")
        g.line("except ValueError:")  # (binascii.Error is one)
        g.line(f"    {g.fail(self, loc, 'not valid base64')} from None")

    def describe(self) -> dict[str, Any]:
        return {"type": "string", "contentEncoding": "base64", "maxLength": (self.max_bytes * 4) // 3 + 8}


class Array(Schema):
    """A list of `of` items; `too_many` is the text for more than `max_items`."""

    json_type = "array"

    def __init__(self, of: Schema, *, min_items: int = 0, max_items: int | None = None,
                 too_many: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.of = of
        self.min_items, self.max_items = min_items, max_items
        self.too_many = too_many

    def expected(self) -> str:
        return "expected a non-empty list" if self.min_items == 1 else "expected a list"

    def emit(self, g: _Gen, v: str, loc: str) -> None:
        g.check(f"type({v}) is not list", self, loc, self.expected())
        self.emit_items(g, v, loc)

    def emit_items(self, g: _Gen, v: str, loc: str) -> None:
        if self.max_items is not None:
            g.check(f"len({v}) > {self.max_items}", self, loc, self.too_many or f"more than {self.max_items} items")
        if self.min_items:
            g.check(f"len({v}) < {self.min_items}", self, loc, self.expected())
        if isinstance(self.of, Object):
            # One call per item, as a hand-written loop would; the item's place is built on failure only.
            place = g.local("where")
            g.line(f"{place} = {g.root_place(loc)}")
            g.line(f"{v} = [{g.const(self.of.parser())}(x, {place}, i) for i, x in enumerate({v})]")
        elif not (isinstance(self.of, Json) and not self.of.json_kind and self.of.max_chars is None):
            item, index, items = g.local("item"), g.local("i"), g.local("items")
            g.line(f"{items} = []")
            g.line(f"for {index}, {item} in enumerate({v}):")
            with g.inside(self, loc):
                g.indent += 1
                self.of.emit(g, item, f"where_is({loc}, {index})")
                g.line(f"{items}.append({item})")
                g.indent -= 1
            g.line(f"{v} = {items}")

    def describe(self) -> dict[str, Any]:
        return _given({"type": "array", "items": self.of.openapi()}, minItems=self.min_items or None,
                      maxItems=self.max_items)


class Csv(Array):
    """A query parameter holding a comma-separated list (`node=pi-1,pi-2`); empty items are dropped."""

    def emit_text(self, g: _Gen, v: str, loc: str) -> None:
        g.line(f"{v} = [x for x in {v}.split(',') if x]")
        self.emit_items(g, v, loc)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "x-dvic-style": "comma-separated"}


class Raw(Schema):
    """A request body that is not JSON (a daemon file): its content type and most bytes."""

    def __init__(self, content_type: str, *, max_bytes: int, **options: Any) -> None:
        super().__init__(**options)
        self.content_type = content_type
        self.max_bytes = max_bytes

    def describe(self) -> dict[str, Any]:
        return {"type": "string", "format": "binary", "maxLength": self.max_bytes}


class Stream(Raw):
    """A request body handed to the handler unread, as the request's stream (a demo release of up to
    gigabytes: the handler writes it to disk as it arrives and enforces `max_bytes` itself)."""


class Object(Schema):
    """A JSON object with these fields (others are ignored); `checks` see the parsed result and may
    raise SchemaError (rules over several fields)."""

    json_type = "object"
    text = False  # a Query reads query-string text instead

    def __init__(self, fields: Mapping[str, Schema], *, checks: Iterable[Check] = (), **options: Any) -> None:
        super().__init__(**options)
        self.fields = dict(fields)
        self.checks = tuple(checks)
        self.source = ""
        self._parse: Parser | None = None

    def expected(self) -> str:
        return "expected an object"

    def parse(self, value: Any, where: str = "") -> dict[str, Any]:
        """The object's fields, checked; `where` is its place in messages ("" for a whole body)."""
        result: dict[str, Any] = self.parser()(value, where, None)
        return result

    def parser(self) -> Parser:
        """The compiled function: (value, where, key) -> the parsed dict."""
        if self._parse is None:
            self._parse = _compile(self)
        return self._parse

    def emit(self, g: _Gen, v: str, loc: str) -> None:
        g.line(f"{v} = {g.const(self.parser())}({v}, {g.root_place(loc)}, None)")

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "object", "properties": {k: s.openapi() for k, s in self.fields.items()}}
        required = [k for k, s in self.fields.items() if s.required]
        if required:
            out["required"] = required
        return out


class Query(Object):
    """The query parameters of a route: text values, read by each field's rules for text.

    An empty value counts as not given, unless the field is a `Str(blank_is_value=True)`."""

    text = True

    def parameters(self) -> list[dict[str, Any]]:
        """The OpenAPI `parameters` entries."""
        out = []
        for name, schema in self.fields.items():
            param: dict[str, Any] = {"name": name, "in": "query", "required": schema.required,
                                     "schema": schema.openapi()}
            if isinstance(schema, Csv):
                param.update(style="form", explode=False)
            if schema.doc:
                param["description"] = schema.doc
            out.append(param)
        return out


# -- compiling ------------------------------------------------------------------------------------
class _Gen:
    """Source lines of one compiled function, and the constants they refer to by name."""

    def __init__(self) -> None:
        import base64
        import json
        import math

        self.lines: list[str] = []
        self.indent = 1
        self.ns: dict[str, Any] = {
            "SchemaError": SchemaError, "where_is": where_is, "_say": _say, "_MISSING": _MISSING, "_OMIT": OMIT,
            "_isfinite": math.isfinite, "_clip": clip_utf8, "_b64decode": base64.b64decode, "_dumps": json.dumps,
        }
        self.marks: dict[str, str] = {}
        self.field: tuple[str, str] | None = None  # (place expression, name) of the field being read
        self._count = 0
        self._scopes: list[tuple[Schema, str]] = []  # fields whose message covers what is inside them

    def local(self, hint: str) -> str:
        self._count += 1
        return f"_{hint}{self._count}"

    def const(self, value: Any) -> str:
        name = self.local("c")
        self.ns[name] = value
        return name

    def root_place(self, loc: str) -> str:
        """`loc` evaluated now: just the field's name when the object is the parsed value itself
        (a frame's `lines`: no string is built per frame)."""
        if self.field is not None and loc == self.field[0]:
            return f"{self.field[1]!r} if not where and key is None else {loc}"
        return loc

    def mark(self, field: str) -> str:
        return self.marks.setdefault(field, self.local("mark"))

    def line(self, text: str) -> None:
        self.lines.append("    " * self.indent + text)

    def inside(self, schema: Schema, loc: str) -> _Scope:
        return _Scope(self, schema, loc)

    def fail(self, schema: Schema, loc: str, text: str, raw: str | None = None) -> str:
        """A raise statement for a failure of `schema` at `loc` (a field covering it may say it its way)."""
        code = schema.code
        for outer, outer_loc in reversed(self._scopes):
            if schema.message is None and schema.expects is None and (outer.message or outer.expects):
                schema, loc = outer, outer_loc
            code = code or outer.code
        if schema.message is not None:
            message = self._text(schema.message, raw)
        else:
            message = f"_say({loc}, {self._text(schema.expects or text, raw)})"
        return f"raise SchemaError({message}, {code!r})"

    def _text(self, text: str, raw: str | None) -> str:
        if raw is not None and "{raw}" in text:
            return f"{text!r}.replace('{{raw}}', repr({raw}))"
        return repr(text)

    def check(self, failed: str, schema: Schema, loc: str, text: str, *, raw: str | None = None,
              indent: int = 0) -> None:
        """`if failed: raise ...`; `raw` names the value a message's `{raw}` shows."""
        self.lines.append("    " * (self.indent + indent) + f"if {failed}:")
        self.lines.append("    " * (self.indent + indent + 1) + self.fail(schema, loc, text, raw))


class _Scope:
    def __init__(self, g: _Gen, schema: Schema, loc: str) -> None:
        self.g, self.entry = g, (schema, loc)

    def __enter__(self) -> None:
        self.g._scopes.append(self.entry)

    def __exit__(self, *exc: object) -> None:
        self.g._scopes.pop()


def _default(g: _Gen, schema: Schema) -> str:
    """An expression for the default: literals in line, a fresh {} or [] each time."""
    value = schema.default
    if value is OMIT:
        return "_OMIT"
    if value is None or isinstance(value, bool | int | float | str) or value in ({}, []):
        return repr(value)
    return g.const(value)


def _compile(obj: Object) -> Parser:
    g = _Gen()
    here = "where_is(where, key)"
    if not obj.text:
        g.line("if type(value) is not dict:")
        g.line(f"    {g.fail(obj, here, obj.expected())}")
    names: dict[str, str] = {}
    for position, (field, schema) in enumerate(obj.fields.items()):
        v = names[field] = f"f{position}"
        if isinstance(schema, Const):
            g.line(f"{v} = {schema.value!r}")
            continue
        g.field = (f"where_is({here}, {field!r})", field)
        _emit_field(g, obj, field, schema, v, g.field[0])
    for field, flag in g.marks.items():
        g.lines.insert(0, f"    {flag} = False")
        g.line(f"if {flag}: {names[field]} = True")
    _emit_result(g, obj, names)
    name = f"parse_{'query' if obj.text else 'object'}"
    obj.source = f"def {name}(value, where, key):\n" + "\n".join(g.lines) + "\n"
    exec(compile(obj.source, f"<schema {', '.join(obj.fields)}>", "exec"), g.ns)  # noqa: S102 (declarations only)
    parse: Parser = g.ns[name]
    return parse


def _emit_field(g: _Gen, obj: Object, field: str, schema: Schema, v: str, loc: str) -> None:
    """Read one field into local `v`: absent (or blank text, or a nullable null) gives the default."""
    if isinstance(schema, Bool) and schema.coerce and schema.default is False and not obj.text:
        g.line(f"{v} = bool(value.get({field!r}))")  # absent: bool(None), the default
        return
    if obj.text:
        blank_ok = isinstance(schema, Str) and schema.blank_is_value
        g.line(f"{v} = value.get({field!r})")
        g.line(f"if {v} is None{'' if blank_ok else f' or {v} == {chr(39) * 2}'}:")
    elif schema.required and not schema.nullable and schema.refuses_none:
        g.line(f"{v} = value.get({field!r})")  # absent: None, which the first check refuses
        with g.inside(schema, loc):
            schema.emit(g, v, loc)
        return
    elif schema.nullable or schema.required:
        g.line(f"{v} = value.get({field!r}{'' if schema.nullable else ', _MISSING'})")
        g.line(f"if {v} is {'None' if schema.nullable else '_MISSING'}:")
    else:
        g.line(f"{v} = value.get({field!r}, _MISSING)")
        g.line(f"if {v} is _MISSING:")
    if schema.required:
        g.line(f"    {g.fail(schema, loc, schema.expected(), raw='None')}")
        checks_indent = 0
    else:
        g.line(f"    {v} = {_default(g, schema)}")
        g.line("else:")
        checks_indent = 1
    g.indent += checks_indent
    before = len(g.lines)
    with g.inside(schema, loc):
        (schema.emit_text if obj.text else schema.emit)(g, v, loc)
    if checks_indent and len(g.lines) == before:
        g.line("pass")
    g.indent -= checks_indent


def _emit_result(g: _Gen, obj: Object, names: dict[str, str]) -> None:
    """Build the result in field order; a field whose default is OMIT is there only when given."""
    always: list[str] = []
    maybe: list[tuple[str, str]] = []
    for field, v in names.items():
        if maybe or obj.fields[field].default is OMIT:
            maybe.append((field, v))
        else:
            always.append(f"{field!r}: {v}")
    if not maybe and not obj.checks:
        g.line(f"return {{{', '.join(always)}}}")
        return
    g.line(f"out = {{{', '.join(always)}}}")
    for field, v in maybe:
        if obj.fields[field].default is OMIT:
            g.line(f"if {v} is not _OMIT: out[{field!r}] = {v}")
        else:
            g.line(f"out[{field!r}] = {v}")
    for check in obj.checks:
        g.line(f"{g.const(check)}(out)")
    g.line("return out")
