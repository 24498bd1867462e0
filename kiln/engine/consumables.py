"""Consumable resources as the scheduler weighs them: pure rules, no I/O.

A job that names consumable resources starts only when each has at least the quantity it needs
available. Placing it takes the quantity: a REPLENISHABLE resource gets it back when the attempt
ends (the in-use count is the sum over active attempts, so nothing is written then), a
NON_REPLENISHABLE one loses it from its total for good (written in the placing transaction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

REPLENISHABLE = "REPLENISHABLE"
NON_REPLENISHABLE = "NON_REPLENISHABLE"
RESOURCE_TYPES = (REPLENISHABLE, NON_REPLENISHABLE)

Need = tuple[str, int]  # (resource name, quantity)


def available(resource_type: str, total: int, in_use: int) -> int:
    """What new attempts may still take. A NON_REPLENISHABLE total already lost what active
    attempts took, so only a REPLENISHABLE one subtracts them. Never below zero (a total set
    below what is in use just means nothing is available until enough comes back)."""
    held = in_use if resource_type == REPLENISHABLE else 0
    return max(0, total - held)


def shortfall(needs: Sequence[Need], free: Mapping[str, int]) -> str | None:
    """None when every need fits `free` (resource name -> available quantity, absent when the
    resource does not exist); else the RUNNABLE statusReason naming the first that does not."""
    for name, quantity in needs:
        if name not in free:
            return (
                f"CONSUMABLE_RESOURCE:NOT_FOUND - Waiting for consumable resource {name}, which does not exist "
                f"(create it to let the job start)."
            )
        if quantity > free[name]:
            return (
                f"CONSUMABLE_RESOURCE:INSUFFICIENT_QUANTITY - Waiting for consumable resource {name}: "
                f"the job needs {quantity}, {free[name]} available."
            )
    return None


def take(needs: Sequence[Need], free: dict[str, int]) -> None:
    """Lower `free` by what a placed job takes (later jobs of the same plan see the rest)."""
    for name, quantity in needs:
        free[name] -= quantity
