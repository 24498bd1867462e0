"""Retry decisions: `retryStrategy.attempts` and `evaluateOnExit`, as AWS documents them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.errors import ValidationError

MAX_ATTEMPTS = 10
MAX_EVALUATE_ON_EXIT = 5
MAX_PATTERN_LENGTH = 512


@dataclass(frozen=True)
class AttemptOutcome:
    """What an attempt's failure looked like, for matching against evaluateOnExit."""

    status_reason: str | None
    reason: str | None
    exit_code: int | None


def check_retry_strategy(strategy: dict[str, Any] | None) -> None:
    if strategy is None:
        return
    attempts = strategy.get("attempts")
    conditions = strategy.get("evaluateOnExit") or []
    if attempts is None:
        raise ValidationError("Error executing request, Exception : RetryAttempts must be provided with retry strategy")
    if not 1 <= attempts <= MAX_ATTEMPTS:
        raise ValidationError(f"retryStrategy.attempts must be between 1 and {MAX_ATTEMPTS} (got {attempts})")
    if len(conditions) > MAX_EVALUATE_ON_EXIT:
        raise ValidationError(f"retryStrategy.evaluateOnExit allows at most {MAX_EVALUATE_ON_EXIT} entries")
    for condition in conditions:
        if str(condition.get("action", "")).upper() not in {"RETRY", "EXIT"}:
            raise ValidationError("retryStrategy.evaluateOnExit action must be RETRY or EXIT")
        for key in ("onStatusReason", "onReason", "onExitCode"):
            pattern = condition.get(key)
            if pattern is not None and len(pattern) > MAX_PATTERN_LENGTH:
                raise ValidationError(f"evaluateOnExit.{key} is longer than {MAX_PATTERN_LENGTH} characters")
        exit_pattern = condition.get("onExitCode")
        if exit_pattern is not None and not exit_pattern.rstrip("*").isdigit() and exit_pattern != "*":
            raise ValidationError(f"evaluateOnExit.onExitCode {exit_pattern!r} must be digits, optionally ending in *")


def matches(pattern: str, value: str | None) -> bool:
    """Exact match, or prefix match when the pattern ends with `*`.

    An absent value (no container reason, no exit code) counts as empty, so a bare `*` matches
    it: AWS documents `{"action": "EXIT", "onReason": "*"}` as the rule that "matches all other
    job failures", and most failures (a plain non-zero exit) carry no container reason.
    """
    text = "" if value is None else value
    if pattern.endswith("*"):
        return text.startswith(pattern[:-1])
    return text == pattern


def _condition_matches(condition: dict[str, Any], outcome: AttemptOutcome) -> bool:
    exit_code = None if outcome.exit_code is None else str(outcome.exit_code)
    checks = (
        ("onStatusReason", outcome.status_reason),
        ("onReason", outcome.reason),
        ("onExitCode", exit_code),
    )
    return all(matches(condition[key], value) for key, value in checks if condition.get(key) is not None)


def should_retry(strategy: dict[str, Any] | None, attempts_made: int, outcome: AttemptOutcome) -> bool:
    """True when a failed attempt earns another: attempts remain and no EXIT rule matched first."""
    allowed = (strategy or {}).get("attempts") or 1
    if attempts_made >= allowed:
        return False
    for condition in (strategy or {}).get("evaluateOnExit") or []:
        if _condition_matches(condition, outcome):
            return str(condition["action"]).upper() == "RETRY"
    return True
