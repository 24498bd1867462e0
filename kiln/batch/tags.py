"""Tag rules: at most 50 per resource, keys 1-128, values up to 256 characters."""

from __future__ import annotations

from kiln.errors import ValidationError

MAX_TAGS = 50


def check_tags(tags: dict[str, str] | None) -> None:
    if not tags:
        return
    if len(tags) > MAX_TAGS:
        raise ValidationError(f"A resource can have at most {MAX_TAGS} tags (got {len(tags)})")
    for key, value in tags.items():
        if not 1 <= len(key) <= 128:
            raise ValidationError(f"Tag key {key!r} must be 1-128 characters")
        if key.lower().startswith("aws:"):
            raise ValidationError(f"Tag key {key!r}: the aws: prefix is reserved")
        if len(value) > 256:
            raise ValidationError(f"Tag value for {key!r} must be at most 256 characters")


def merged(existing: dict[str, str] | None, new: dict[str, str]) -> dict[str, str]:
    result = {**(existing or {}), **new}
    check_tags(result)
    return result
