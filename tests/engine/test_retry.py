"""Retry decisions (https://docs.aws.amazon.com/batch/latest/userguide/job_retries.html): attempts, evaluateOnExit matching, validation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.engine.retry import AttemptOutcome, check_retry_strategy, matches, should_retry
from kiln.errors import ValidationError

EXITED = "Essential container in task exited"
HOST_LOST = "Host EC2 (instance i-0123456789abcdef0) terminated."
OOM = "OutOfMemoryError: Container killed due to memory usage"
PULL = "CannotPullContainerError: pull access denied for nope"

EXIT_1 = AttemptOutcome(EXITED, None, 1)
EXIT_137_OOM = AttemptOutcome(EXITED, OOM, 137)
SPOT = AttemptOutcome(HOST_LOST, None, None)
NO_PULL = AttemptOutcome("Task failed to start", PULL, None)


def strategy(attempts: int = 3, *rules: dict[str, str]) -> dict[str, Any]:
    return {"attempts": attempts, "evaluateOnExit": list(rules)} if rules else {"attempts": attempts}


# -- attempts -------------------------------------------------------------------------------------


def test_no_strategy_means_one_attempt() -> None:
    assert not should_retry(None, 1, EXIT_1)
    assert not should_retry({}, 1, EXIT_1)


def test_retries_until_attempts_are_used_up() -> None:
    assert should_retry(strategy(3), 1, EXIT_1)
    assert should_retry(strategy(3), 2, EXIT_1)
    assert not should_retry(strategy(3), 3, EXIT_1)
    assert not should_retry(strategy(1), 1, EXIT_1)


def test_exhausted_attempts_win_over_a_retry_rule() -> None:
    assert not should_retry(strategy(2, {"action": "RETRY", "onExitCode": "1"}), 2, EXIT_1)


@settings(max_examples=50, deadline=None)
@given(attempts=st.integers(1, 10), made=st.integers(1, 12))
def test_without_evaluate_on_exit_any_failure_retries_while_attempts_remain(attempts: int, made: int) -> None:
    for outcome in (EXIT_1, EXIT_137_OOM, SPOT, NO_PULL):
        assert should_retry(strategy(attempts), made, outcome) == (made < attempts)


# -- evaluateOnExit -------------------------------------------------------------------------------


def test_exit_rule_on_exit_code_stops_retries() -> None:
    rules = strategy(3, {"action": "EXIT", "onExitCode": "1"})
    assert not should_retry(rules, 1, EXIT_1)
    assert should_retry(rules, 1, AttemptOutcome(EXITED, None, 2))


def test_retry_rule_on_exit_code() -> None:
    assert should_retry(strategy(3, {"action": "RETRY", "onExitCode": "1"}), 1, EXIT_1)


def test_trailing_star_is_a_prefix_match() -> None:
    rules = strategy(3, {"action": "EXIT", "onExitCode": "13*"})
    assert not should_retry(rules, 1, EXIT_137_OOM)
    assert not should_retry(rules, 1, AttemptOutcome(EXITED, None, 13))
    assert should_retry(rules, 1, AttemptOutcome(EXITED, None, 31))


def test_without_star_the_whole_value_must_match() -> None:
    assert should_retry(strategy(3, {"action": "EXIT", "onExitCode": "13"}), 1, EXIT_137_OOM)
    assert should_retry(strategy(3, {"action": "EXIT", "onReason": "OutOfMemoryError"}), 1, EXIT_137_OOM)
    assert should_retry(strategy(3, {"action": "EXIT", "onStatusReason": "Host EC2"}), 1, SPOT)


def test_first_matching_rule_decides() -> None:
    retry_then_exit = strategy(3, {"action": "RETRY", "onExitCode": "1"}, {"action": "EXIT", "onExitCode": "*"})
    exit_then_retry = strategy(3, {"action": "EXIT", "onExitCode": "1"}, {"action": "RETRY", "onExitCode": "*"})
    assert should_retry(retry_then_exit, 1, EXIT_1)
    assert not should_retry(exit_then_retry, 1, EXIT_1)
    assert not should_retry(retry_then_exit, 1, AttemptOutcome(EXITED, None, 2))


def test_no_matching_rule_means_retry() -> None:
    assert should_retry(strategy(3, {"action": "EXIT", "onExitCode": "2"}), 1, EXIT_1)
    assert should_retry(strategy(3, {"action": "EXIT", "onReason": "CannotPullContainerError:*"}), 1, EXIT_1)


def test_every_field_of_a_rule_must_match() -> None:
    rule = {"action": "EXIT", "onStatusReason": "Essential*", "onReason": "OutOfMemoryError*", "onExitCode": "137"}
    assert not should_retry(strategy(3, rule), 1, EXIT_137_OOM)
    assert should_retry(strategy(3, rule), 1, AttemptOutcome(EXITED, OOM, 1))
    assert should_retry(strategy(3, rule), 1, AttemptOutcome(EXITED, None, 137))
    assert should_retry(strategy(3, rule), 1, AttemptOutcome("Task failed to start", OOM, 137))


@pytest.mark.parametrize(("action", "retried"), [("exit", False), ("Exit", False), ("retry", True), ("Retry", True)])
def test_action_is_case_insensitive(action: str, retried: bool) -> None:
    assert should_retry(strategy(3, {"action": action, "onExitCode": "1"}), 1, EXIT_1) is retried


def test_spot_reclaim_retry_with_catch_all_exit() -> None:
    """AWS's documented pattern: retry host losses, give up on everything else."""
    rules = strategy(3, {"action": "RETRY", "onStatusReason": "Host EC2*"}, {"action": "EXIT", "onReason": "*"})
    assert should_retry(rules, 1, SPOT)
    assert not should_retry(rules, 1, EXIT_137_OOM)
    assert not should_retry(rules, 1, NO_PULL)
    # A plain non-zero exit has no container reason; the catch-all must still end the job.
    assert not should_retry(rules, 1, EXIT_1)


def test_exit_on_out_of_memory() -> None:
    rules = strategy(5, {"action": "EXIT", "onReason": "OutOfMemoryError*"})
    assert not should_retry(rules, 1, EXIT_137_OOM)
    assert should_retry(rules, 1, AttemptOutcome(EXITED, None, 137))
    assert should_retry(rules, 1, SPOT)


def test_exit_on_image_pull_failure() -> None:
    rules = strategy(3, {"action": "EXIT", "onReason": "CannotPullContainerError:*"})
    assert not should_retry(rules, 1, NO_PULL)
    assert should_retry(rules, 1, EXIT_1)


def test_matches() -> None:
    assert matches("abc", "abc")
    assert not matches("abc", "abcd")
    assert not matches("abc", "ab")
    assert matches("ab*", "abcd")
    assert matches("ab*", "ab")
    assert not matches("ab*", "a")
    assert matches("*", "anything")
    assert matches("*", "")
    assert matches("*", None)
    assert not matches("ab*", None)
    assert not matches("abc", None)


@settings(max_examples=100, deadline=None)
@given(prefix=st.text(st.characters(exclude_characters="*"), max_size=8), rest=st.text(max_size=8))
def test_star_pattern_matches_exactly_the_values_with_its_prefix(prefix: str, rest: str) -> None:
    assert matches(prefix + "*", prefix + rest)
    assert matches(prefix + rest, prefix + rest)
    assert matches(prefix, prefix + rest) == (rest == "")


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy_doc",
    [
        None,
        {"attempts": 1},
        {"attempts": 10},
        {"attempts": 3, "evaluateOnExit": [{"action": "retry", "onExitCode": "1*"}]},
        {"attempts": 3, "evaluateOnExit": [{"action": "EXIT", "onExitCode": "*"}]},
        {"attempts": 3, "evaluateOnExit": [{"action": "EXIT", "onReason": "x" * 512}] * 5},
    ],
)
def test_valid_strategies(strategy_doc: dict[str, Any] | None) -> None:
    check_retry_strategy(strategy_doc)


@pytest.mark.parametrize(
    ("strategy_doc", "message"),
    [
        ({"evaluateOnExit": [{"action": "EXIT"}]}, "RetryAttempts must be provided with retry strategy"),
        ({}, "RetryAttempts must be provided"),
        ({"attempts": 0}, "between 1 and 10"),
        ({"attempts": 11}, "between 1 and 10"),
        ({"attempts": 2, "evaluateOnExit": [{"action": "EXIT"}] * 6}, "at most 5"),
        ({"attempts": 2, "evaluateOnExit": [{"action": "STOP"}]}, "RETRY or EXIT"),
        ({"attempts": 2, "evaluateOnExit": [{"onExitCode": "1"}]}, "RETRY or EXIT"),
        ({"attempts": 2, "evaluateOnExit": [{"action": "EXIT", "onReason": "x" * 513}]}, "longer than 512"),
        ({"attempts": 2, "evaluateOnExit": [{"action": "EXIT", "onExitCode": "abc"}]}, "must be digits"),
        ({"attempts": 2, "evaluateOnExit": [{"action": "EXIT", "onExitCode": "*1"}]}, "must be digits"),
    ],
)
def test_invalid_strategies(strategy_doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        check_retry_strategy(strategy_doc)


def test_missing_attempts_uses_the_aws_error_text() -> None:
    with pytest.raises(ValidationError) as caught:
        check_retry_strategy({"evaluateOnExit": [{"action": "EXIT", "onExitCode": "1"}]})
    assert caught.value.message == (
        "Error executing request, Exception : RetryAttempts must be provided with retry strategy"
    )
