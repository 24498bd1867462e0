"""Opaque `nextToken`s and `maxResults` bounds shared by every paginated operation."""

from __future__ import annotations

import base64
import json
from typing import Any

from kiln.errors import ValidationError


def encode_token(position: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode()


def decode_token(token: str | None) -> Any:
    if token is None:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, UnicodeDecodeError):
        raise ValidationError(f"Invalid nextToken {token!r}: pass back a token from a previous response") from None


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
    if not isinstance(position, int) or position < 0:
        raise ValidationError(f"Invalid nextToken {token!r}: pass back a token from a previous response")
    return position


def check_exclusive(listed: list[str] | None, max_results: int | None, listed_name: str) -> None:
    if listed and max_results is not None:
        raise ValidationError(f"Error executing request, Exception : {listed_name} and MaxResults cannot both be set")
