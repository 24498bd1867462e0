"""Request and response shapes, read from botocore's service models rather than re-typed.

botocore is the contract our clients already obey, so routes, required members, types and enums all
come from its `batch` model (and, for the CloudWatch Logs API on the same endpoint, its `logs` model:
every function takes the service name, `batch` by default). The server re-runs botocore's own client-side validator (clients other
than botocore exist, and `Config(parameter_validation=False)` skips it), then adds what botocore leaves to the
server: enum membership, booleans posing as numbers, and integers wider than the model's 32/64 bits.
Semantic rules (ranges, limits, cross-field rules) belong to the domain, not here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import botocore.session
from botocore.model import OperationModel, OperationNotFoundError, ServiceModel, Shape
from botocore.validate import ParamValidator

from kiln.errors import ClientError, ValidationError

SERVICE_NAME = "batch"
API_VERSION = "2016-08-10"
# The model versions Kiln speaks, per service; botocore ships older ones beside some of them.
API_VERSIONS = {SERVICE_NAME: API_VERSION, "logs": "2014-03-28"}

# The deepest Batch input (SubmitJob's EKS or node overrides) nests under 10 levels; recursive code
# below (null dropping, validation, serialization) must never meet a body deep enough to overflow.
MAX_JSON_DEPTH = 32
_NUMBER_TYPES = frozenset({"integer", "long", "float", "double"})
# AWS's service deserializes `integer` as a 32-bit and `long` as a 64-bit signed number; Python has no
# such limit, and a larger value would otherwise reach the database (and fail there, as a 500).
_INTEGER_BITS = {"integer": 32, "long": 64}
_CASE_INSENSITIVE_DOC = re.compile(r"(?:aren't|are not|isn't|is not|not) case[- ]sensitive|case[- ]insensitive")
_PY_TYPE_NAMES = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "decimal.Decimal": "number",
    "bool": "boolean",
    "dict": "object",
    "list": "list",
    "tuple": "list",
    "NoneType": "null",
    "datetime.datetime": "timestamp",
}


@lru_cache(maxsize=len(API_VERSIONS))
def service_model(service: str = SERVICE_NAME) -> ServiceModel:
    """A service's model, loaded once: parsing the JSON model costs tens of milliseconds."""
    return botocore.session.get_session().get_service_model(service, API_VERSIONS[service])


def operation_model(operation: str, service: str = SERVICE_NAME) -> OperationModel:
    """The model of one operation; an unknown name is the caller's mistake, not a crash."""
    try:
        return service_model(service).operation_model(operation)
    except OperationNotFoundError as exc:
        raise ClientError(f"Unknown operation {operation}") from exc


# --------------------------------------------------------------------------------------------- routes


@dataclass(frozen=True)
class Route:
    """One operation's HTTP binding; `pattern` also accepts any path prefix before `/v1/`."""

    operation: str
    method: str
    uri: str
    labels: tuple[str, ...]
    pattern: re.Pattern[str]

    def match(self, path: str) -> dict[str, str] | None:
        """URI labels of `path` (already percent-decoded), or None when the path is not this route's."""
        found = self.pattern.fullmatch(path)
        return None if found is None else dict(zip(self.labels, found.groups(), strict=True))


def compile_route(operation: str, method: str, request_uri: str) -> Route:
    """Turn `/v1/tags/{resourceArn}` into a regex; labels match several segments since ARNs hold '/'."""
    parts = re.split(r"\{([^}]+)\}", request_uri.split("?", 1)[0])
    literals, labels = parts[0::2], tuple(label.rstrip("+") for label in parts[1::2])
    regex = "(.+)".join(re.escape(literal) for literal in literals)
    # Endpoint URLs may carry a path prefix (`http://h/kiln/` -> `/kiln/v1/...`); accept any.
    return Route(operation, method.upper(), request_uri, labels, re.compile(f"(?:/.*?)?{regex}"))


class RouteTable:
    """Every operation of the model, implemented or not, so unknown and unimplemented differ."""

    def __init__(self, model: ServiceModel) -> None:
        self.routes: tuple[Route, ...] = tuple(
            compile_route(name, op.http["method"], op.http["requestUri"])
            for name in model.operation_names
            for op in [model.operation_model(name)]
        )

    @property
    def operations(self) -> frozenset[str]:
        return frozenset(route.operation for route in self.routes)

    def resolve(self, method: str, path: str) -> tuple[str, dict[str, str]]:
        """(operation, URI labels) for a request; a wrong method or path is a ClientError, never a 500."""
        matches = [(route, labels) for route in self.routes if (labels := route.match(path)) is not None]
        for route, labels in matches:
            if route.method == method.upper():
                return route.operation, labels
        if matches:
            allowed = ", ".join(sorted({route.method for route, _ in matches}))
            raise ClientError(f"Method {method.upper()} is not allowed for {path}; use {allowed}")
        raise ClientError(f"Unknown operation {method.upper()} {path}")


@lru_cache(maxsize=1)
def route_table() -> RouteTable:
    return RouteTable(service_model())


# ------------------------------------------------------------------------------------------- requests


def parse_request(
    operation: str,
    body: bytes,
    path_params: Mapping[str, str] | None = None,
    query: Mapping[str, Sequence[str]] | None = None,
    service: str = SERVICE_NAME,
) -> dict[str, Any]:
    """Turn one HTTP request into validated input parameters for `operation` of `service`.

    `path_params` are the percent-decoded URI labels, `query` maps each query key to all its values
    (repeated keys such as `tagKeys` arrive as several values). Raises ValidationError with a message
    a person can act on.
    """
    shape = operation_model(operation, service).input_shape
    params = _drop_nulls(decode_json_object(body))
    if shape is None:
        if params:
            raise ValidationError(f"{operation} takes no parameters, got: {', '.join(sorted(params))}")
        return {}
    params.update(_bound_members(shape, path_params or {}, query or {}))
    validate_input(params, shape)
    return params


def decode_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object; an empty body means `{}` (GET/DELETE send none)."""
    if not body.strip():
        return {}
    try:
        text = body.decode("utf-8")  # AWS's JSON protocols are UTF-8 only; json.loads would guess UTF-16/32
    except UnicodeDecodeError as exc:
        raise ValidationError(
            f"Malformed JSON body: not UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start})"
        ) from None
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValidationError(
            f"Malformed JSON body: objects and arrays are nested deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except ValueError as exc:
        raise ValidationError(f"Malformed JSON body: {exc}") from exc
    if not isinstance(document, dict):
        raise ValidationError(f"Request body must be a JSON object, got {_json_type(document)}")
    if _deeper_than(document, MAX_JSON_DEPTH):
        raise ValidationError(f"Malformed JSON body: objects and arrays are nested deeper than {MAX_JSON_DEPTH} levels")
    try:  # `\ud800` escapes decode to lone surrogates, which no database or UTF-8 response can hold
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("Malformed JSON body: a string holds an unpaired UTF-16 surrogate escape") from None
    return document


def _deeper_than(document: Any, limit: int) -> bool:
    """Whether containers nest more than `limit` deep; iterative, so depth cannot exhaust the stack."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _drop_nulls(value: Any) -> Any:
    """JSON `null` means "not given" to AWS's JSON protocols; botocore's validator would reject it."""
    if isinstance(value, dict):
        return {key: _drop_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_drop_nulls(item) for item in value]
    return value


def _bound_members(shape: Shape, path_params: Mapping[str, str], query: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Members the model binds to the URI or query string instead of the body."""
    found: dict[str, Any] = {}
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        wire_name = member.serialization.get("name", name)
        if location == "uri" and wire_name in path_params:
            found[name] = path_params[wire_name]
        elif location == "querystring" and wire_name in query:
            values = list(query[wire_name])
            if member.type_name == "list":
                found[name] = [_query_scalar(value, member.member, wire_name) for value in values]
            elif values:
                found[name] = _query_scalar(values[-1], member, wire_name)
    return found


def _query_scalar(text: str, shape: Shape, wire_name: str) -> Any:
    """Query values are text; convert those the model types as numbers or booleans."""
    if shape.type_name in {"integer", "long"}:
        if not re.fullmatch(r"-?\d+", text):
            raise ValidationError(f"Invalid value {text} for query parameter {wire_name}: must be an integer")
        return int(text)
    if shape.type_name == "boolean":
        if text.lower() not in {"true", "false"}:
            raise ValidationError(f"Invalid value {text} for query parameter {wire_name}: must be a boolean")
        return text.lower() == "true"
    return text


class _ServerSideValidator(ParamValidator):
    """botocore's validator, except that timestamps may be epoch numbers as they come from JSON."""

    def _type_check_datetime(self, value: Any) -> bool:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return True
        return bool(super()._type_check_datetime(value))


def validate_input(params: Mapping[str, Any], shape: Shape) -> None:
    """botocore's checks (required, types, min lengths, unknown members), then enums and numbers."""
    report = _ServerSideValidator().validate(params, shape)
    if report.has_errors():
        lines = [_readable(line) for line in report.generate_report().splitlines() if line]
        raise ValidationError("Parameter validation failed: " + "; ".join(lines))
    problems = list(_value_errors(params, shape, ""))
    if problems:
        raise ValidationError("; ".join(problems))


def _readable(line: str) -> str:
    """botocore names Python classes (`<class 'str'>`); a JSON client needs JSON type names."""
    line = re.sub(r"<class '([\w.]+)'>", lambda m: _PY_TYPE_NAMES.get(m.group(1), m.group(1)), line)
    head, sep, valid = line.partition("valid types: ")
    return head + sep + ", ".join(dict.fromkeys(valid.split(", "))) if sep else line


def _value_errors(value: Any, shape: Shape, path: str) -> Iterator[str]:
    """What botocore does not check client-side: enums, `true` given for a number, integer width."""
    kind = shape.type_name
    if kind == "structure" and not shape.is_document_type:
        for name, member in shape.members.items():
            if name in value:
                yield from _value_errors(value[name], member, f"{path}.{name}" if path else name)
    elif kind == "list":
        for index, item in enumerate(value):
            yield from _value_errors(item, shape.member, f"{path}[{index}]")
    elif kind == "map":
        for key, item in value.items():
            yield from _value_errors(key, shape.key, f"{path} (key: {key})")
            yield from _value_errors(item, shape.value, f"{path}.{key}")
    elif kind == "string" and shape.enum and not _enum_allows(shape, value):
        yield f"Invalid value {value} for {path}: must be one of {', '.join(shape.enum)}"
    elif kind in _NUMBER_TYPES and isinstance(value, bool):
        shown = json.dumps(value)
        yield f"Invalid type for parameter {path}, value: {shown}, type: boolean, valid types: {kind}"
    elif kind in _INTEGER_BITS and isinstance(value, int) and not _fits(value, _INTEGER_BITS[kind]):
        yield f"Invalid value {value} for {path}: must be a {_INTEGER_BITS[kind]}-bit integer"


def _fits(value: int, bits: int) -> bool:
    """Whether `value` is a signed integer of `bits` bits."""
    return -(2 ** (bits - 1)) <= value < 2 ** (bits - 1)


def _enum_allows(shape: Shape, value: str) -> bool:
    """Exact match, unless the model's documentation declares the member case-insensitive."""
    if value in shape.enum:
        return True
    if _CASE_INSENSITIVE_DOC.search(shape.documentation or ""):
        return value.upper() in {allowed.upper() for allowed in shape.enum}
    return False


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


# ------------------------------------------------------------------------------------------ responses


def serialize_output(operation: str, result: Mapping[str, Any] | None, service: str = SERVICE_NAME) -> dict[str, Any]:
    """The body for a successful call: null members omitted, members outside the output shape dropped.

    botocore skips nulls anyway, but AWS omits absent members and the domain may carry extra fields;
    the output shape is the contract, so nothing else leaks onto the wire.
    """
    shape = operation_model(operation, service).output_shape
    if shape is None or not result:
        return {}
    pruned = _pruner(shape)(result)
    return pruned if isinstance(pruned, dict) else {}


_Pruner = Callable[[Any], Any]
_PRUNERS: dict[Shape, _Pruner] = {}  # one per shape of the loaded models (a bounded set)


def _pruner(shape: Shape) -> _Pruner:
    """The function that prunes a value of `shape`, made once per shape: DescribeJobs of 100 jobs
    prunes ~80 structures per job, and walking each shape's members every time was a third of it."""
    pruner = _PRUNERS.get(shape)
    if pruner is None:
        pruner = _PRUNERS[shape] = _make_pruner(shape)
    return pruner


def _make_pruner(shape: Shape) -> _Pruner:
    kind = shape.type_name
    if kind == "structure" and not shape.is_document_type:
        members = dict(shape.members)  # child pruners are looked up when called: shapes may recurse

        def structure(value: Any) -> Any:
            if not isinstance(value, Mapping):
                return _drop_nulls(value)
            kept = {}
            for name, item in value.items():  # members outside the shape are dropped
                member = members.get(name)
                if member is not None and item is not None and (pruned := _pruner(member)(item)) is not None:
                    kept[name] = pruned
            return kept

        return structure
    if kind == "list":
        member = shape.member

        def items(value: Any) -> Any:
            if not isinstance(value, list | tuple):
                return _drop_nulls(value)
            prune = _pruner(member)
            return [prune(item) for item in value if item is not None]

        return items
    if kind == "map":
        value_shape = shape.value

        def entries(value: Any) -> Any:
            if not isinstance(value, Mapping):
                return _drop_nulls(value)
            prune = _pruner(value_shape)
            kept = {key: prune(item) for key, item in value.items()}
            return {key: item for key, item in kept.items() if item is not None}

        return entries
    return _drop_nulls
