"""What every domain operation gets: a repository inside one transaction, ARNs, settings, time."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.batch.arns import Arns
from kiln.config import Settings
from kiln.store.repository import Repository


@dataclass
class Context:
    repo: Repository
    arns: Arns
    settings: Settings
    now: int
