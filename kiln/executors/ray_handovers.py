"""Which attempts this server's Ray executor handed to node agents, kept in Ray's GCS.

A restarted server must tell an attempt that was never handed over (start it now: no second run)
from one that was and that no live agent knows any more (its node died: it is lost and retried).
Placement groups named after each attempt used to be that record; slots are reused across
attempts, so the record is kept here instead: one key in the GCS's key-value store per batch of
hand-overs (one per monitor pass), written before the agents are told, deleted once every attempt
in it has had its exit recorded. It lives as long as the cluster, like the agents and the groups.

The key-value store is Ray's internal API (`ray.experimental.internal_kv`, what Ray's own
libraries use for the same purpose); Kiln pins Ray's version.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Collection, Iterable

from ray.experimental import internal_kv

NAMESPACE = "kiln"


class HandOvers:
    """Hand-over records of one server (`tag`: its host and data dir) in the GCS."""

    def __init__(self, tag: str) -> None:
        self._prefix = f"kiln-{tag}-handed-"
        self._run = uuid.uuid4().hex[:12]  # this server process: its keys never collide with a predecessor's
        self._numbers = itertools.count()
        self._batches: dict[str, set[str]] = {}  # key -> attempts in it whose exit is not recorded yet
        self._batch_of: dict[str, str] = {}  # attempt id -> its key
        self._lock = threading.Lock()  # the monitor records and forgets; `adopt` takes over

    def record(self, attempt_ids: Collection[str]) -> None:
        """Durably note `attempt_ids` as handed over (before the agents are told)."""
        if not attempt_ids:
            return
        key = f"{self._prefix}{self._run}-{next(self._numbers)}"
        internal_kv._internal_kv_put(key, "\n".join(attempt_ids), namespace=NAMESPACE)
        with self._lock:
            self._batches[key] = set(attempt_ids)
            self._batch_of.update(dict.fromkeys(attempt_ids, key))

    def forget(self, attempt_ids: Iterable[str]) -> None:
        """These attempts' ends are recorded: a batch whose attempts all ended is deleted."""
        emptied = set()
        with self._lock:
            for attempt_id in attempt_ids:
                key = self._batch_of.pop(attempt_id, None)
                if key is not None:
                    self._batches[key].discard(attempt_id)
                    if not self._batches[key]:
                        emptied.add(key)
                        del self._batches[key]
        for key in emptied:
            internal_kv._internal_kv_del(key, namespace=NAMESPACE)

    def take_over(self, still_open: Collection[str]) -> set[str]:
        """Everything earlier servers of this tag handed over; their records are replaced by one
        of this server's holding `still_open` (the claimed attempts among them)."""
        keys = internal_kv._internal_kv_list(self._prefix, namespace=NAMESPACE)
        handed: set[str] = set()
        for key in keys:
            value = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
            handed.update(value.decode().split("\n") if value else ())
        self.record(sorted(handed & set(still_open)))
        for key in keys:
            internal_kv._internal_kv_del(key, namespace=NAMESPACE)
        return handed
