"""The store as the rest of Kiln sees it: one object per transaction, with a part per aggregate.

All SQL lives in `kiln.store`; callers get typed records (`kiln.store.records`), never SQLAlchemy
rows, and pass the statuses a query is about (the store names no job state).
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from kiln.store.attempts import AttemptStore
from kiln.store.consumables import ConsumableStore
from kiln.store.jobs import JobStore
from kiln.store.resources import DefinitionStore, environments, policies, queues
from kiln.store.shares import ShareStore


class Repository:
    """Queries over one connection (one transaction), grouped by aggregate:
    `jobs` (and their dependencies), `attempts`, `shares` (fair share), and the API's resources
    `environments`, `queues`, `definitions`, `policies` and `consumables` (consumable resources and
    what jobs need of them)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.jobs = JobStore(connection)
        self.attempts = AttemptStore(connection)
        self.shares = ShareStore(connection)
        self.environments = environments(connection)
        self.queues = queues(connection)
        self.definitions = DefinitionStore(connection)
        self.policies = policies(connection)
        self.consumables = ConsumableStore(connection)
