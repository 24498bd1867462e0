"""Opaque `nextToken`s and `maxResults` bounds shared by every paginated operation."""

from __future__ import annotations

import base64
import json
from typing import Any

from kiln.errors import ValidationError

MAX_POSITION = 2**63 - 1  # tokens carry SQL integers (offsets, epoch ms, indexes): 64-bit at most


def encode_token(position: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode()


def decode_token(token: str | None) -> Any:
    if token is None:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, UnicodeDecodeError):
        raise invalid_token(token) from None


def invalid_token(token: str | None) -> ValidationError:
    return ValidationError(f"Invalid nextToken {token!r}: pass back a token from a previous response")


def _is_position(value: Any) -> bool:
    """A non-negative 64-bit integer (JSON `true` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_POSITION


def page_size(max_results: int | None, *, default: int, maximum: int) -> int:
    if max_results is None:
        return default
    if not 1 <= max_results <= maximum:
        raise ValidationError(f"maxResults must be between 1 and {maximum} (got {max_results})")
    return max_results


def offset_of(token: str | None) -> int:
    """Offset-based tokens for small collections (definitions, queues, environments)."""
    position = decode_token(token)
    if position is None:
        return 0
    if not _is_position(position):
        raise invalid_token(token)
    return int(position)


def keyset_of(token: str | None, types: tuple[type, ...]) -> tuple[Any, ...] | None:
    """Keyset tokens (a list of sort-key values, e.g. [created_at, id]); checked against `types`."""
    position = decode_token(token)
    if position is None:
        return None
    if not isinstance(position, list) or len(position) != len(types):
        raise invalid_token(token)
    for value, kind in zip(position, types, strict=True):
        if not (_is_position(value) if kind is int else isinstance(value, kind)):
            raise invalid_token(token)
    return tuple(position)


def check_exclusive(listed: list[str] | None, max_results: int | None, listed_name: str) -> None:
    if listed and max_results is not None:
        raise ValidationError(f"Error executing request, Exception : {listed_name} and MaxResults cannot both be set")
