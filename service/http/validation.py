"""Request bodies: parsed strictly, checked against the contract, values never echoed."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from service.errors import BadRequest, Unprocessable
from service.secrets.model import IfMatch, NewSecret

NAME_PATTERN = re.compile(r"[A-Z][A-Z0-9_]*")
MAX_NAME_LENGTH = 255
MAX_VALUE_LENGTH = 10000


def check_json_content_type(content_type: str | None) -> None:
    """A body not declared as JSON is a 400: LangWatch's contract has no 415 for clients to expect."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise BadRequest("Content-Type must be application/json")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says why."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("Request body is not valid UTF-8") from None
    try:
        data = _DECODER.decode(text)
    except _DuplicateKey:
        raise BadRequest("Request body repeats a key") from None
    except _NumberOutOfRange:
        raise BadRequest("Request body has a number out of range") from None
    except RecursionError:
        raise BadRequest("Request body is nested too deeply") from None
    except ValueError:
        raise BadRequest("Request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("Request body must be a JSON object")
    return data


_ENTITY_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e]*)"\s*')
_VERSION = re.compile(r"[1-9][0-9]{0,15}")
# The largest version the API documents (JSON's largest exact integer); far past any real one.
MAX_VERSION = 2**53 - 1


def parse_if_match(header: str | None) -> IfMatch | None:
    """If-Match as RFC 9110 reads it: `*`, or entity tags compared strongly.

    A weak tag, or anything that is not an entity tag at all, never matches: a
    condition the server cannot read is a condition that does not hold (412).
    """
    if header is None:
        return None
    if header.strip() == "*":
        return IfMatch(any=True)
    versions: set[int] = set()
    for item in header.split(","):
        tag = _ENTITY_TAG.fullmatch(item)
        if tag is not None and not tag.group(1) and _VERSION.fullmatch(tag.group(2)):
            versions.add(int(tag.group(2)))
    return IfMatch(frozenset(versions))


def parse_version(text: str) -> int:
    """A version number from a path or query."""
    if not _VERSION.fullmatch(text) or int(text) > MAX_VERSION:
        raise BadRequest(f"version must be an integer from 1 to {MAX_VERSION}")
    return int(text)


def parse_new_secret(data: dict[str, Any]) -> NewSecret:
    return NewSecret(name=_name(data), value=_value(data))


def parse_value(data: dict[str, Any]) -> str:
    return _value(data)


def _name(data: dict[str, Any]) -> str:
    if "name" not in data:
        raise Unprocessable("name is required")
    name = data["name"]
    if not isinstance(name, str):
        raise Unprocessable("name must be a string")
    if not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise Unprocessable(f"name must match ^[A-Z][A-Z0-9_]*$ and be at most {MAX_NAME_LENGTH} characters")
    return name


def _value(data: dict[str, Any]) -> str:
    if "value" not in data:
        raise Unprocessable("value is required")
    value = data["value"]
    if not isinstance(value, str):
        raise Unprocessable("value must be a string")
    if not 1 <= len(value) <= MAX_VALUE_LENGTH:
        raise Unprocessable(f"value must be 1 to {MAX_VALUE_LENGTH} characters long")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Unprocessable("value must be valid Unicode (no lone surrogates)") from None
    return value


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


class _NumberOutOfRange(ValueError):
    pass


def _finite_float(text: str) -> float:
    # json.loads turns 1e999 into inf, which no JSON peer can read back (RFC 8259, section 6).
    number = float(text)
    if math.isinf(number):
        raise _NumberOutOfRange(text[:20])
    return number


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        # Past Python's limit on digits (sys.get_int_max_str_digits).
        raise _NumberOutOfRange(text[:20]) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Made once: json.loads with hooks builds a decoder per call, a third of the parse's cost.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_reject_duplicate_keys,
    parse_constant=_reject_constant,
    parse_float=_finite_float,
    parse_int=_int,
)
