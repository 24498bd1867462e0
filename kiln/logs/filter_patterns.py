"""CloudWatch Logs filter patterns for unstructured events: plain terms only.

`ERROR` matches events containing ERROR; `ERROR Exception` both; `?ERROR ?WARN` either; `-DEBUG`
excludes; `"disk full"` is one term with its space. Terms are case-sensitive substrings, as in
CloudWatch. JSON (`{ $.x = 1 }`), space-delimited (`[ip, user, ...]`) and regular-expression
(`%...%`) patterns are refused with a message saying so, rather than silently matching nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kiln.errors import ValidationError

_TERM = re.compile(r'\s*([?-]?)(?:"((?:[^"\\]|\\.)*)"|(\S+))')


@dataclass(frozen=True)
class FilterPattern:
    required: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()  # `?term`: at least one must occur (when there are any)
    excluded: tuple[str, ...] = ()

    def matches(self, message: str) -> bool:
        return (
            all(term in message for term in self.required)
            and (not self.any_of or any(term in message for term in self.any_of))
            and not any(term in message for term in self.excluded)
        )


def parse(pattern: str | None) -> FilterPattern:
    """The pattern as terms; an empty or missing pattern matches every event."""
    text = (pattern or "").strip()
    if text[:1] in {"{", "["} or (len(text) > 1 and text[0] == "%" and text[-1] == "%"):
        raise ValidationError(
            'Kiln supports only plain-term filter patterns (terms, "quoted phrases", ?any, -excluded), '
            f"not JSON, space-delimited or regular-expression patterns: {pattern}"
        )
    groups: dict[str, list[str]] = {"": [], "?": [], "-": []}
    position = 0
    while position < len(text):
        found = _TERM.match(text, position)
        if found is None:  # only trailing blanks are left (the regex skips leading ones)
            break
        prefix, quoted, bare = found.groups()
        term = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        if term:
            groups[prefix].append(term)
        position = found.end()
    return FilterPattern(tuple(groups[""]), tuple(groups["?"]), tuple(groups["-"]))
