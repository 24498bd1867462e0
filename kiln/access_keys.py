"""Access keys for SigV4: a JSON file `<data dir>/credentials`, 0600, written by `kiln keys`.

The server rereads the file when it changes, so `kiln keys create` and `kiln keys delete` take
effect on a running server without a restart. Readers take a shared lock and writers an exclusive
one on the file itself, and writers rewrite it in place, so a reader never sees half a file. Its mode
is checked on every use, not only at start: a file that became readable by others (a careless
chmod, a restore from a backup) is refused.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kiln.errors import ServerError, ValidationError
from kiln.private_files import PRIVATE_FILE_MODE, readable_by_others

log = logging.getLogger(__name__)
CREDENTIALS_FILE_NAME = "credentials"
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # AWS access key ids: AKIA + 16 of these


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    secret_access_key: str
    created_at: str  # ISO 8601, UTC
    description: str = ""


def new_access_key(description: str = "") -> AccessKey:
    """A fresh pair shaped like AWS's, from the `secrets` CSPRNG: 80 bits of id, 240 of secret."""
    key_id = "AKIA" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))
    created = datetime.now(UTC).replace(microsecond=0).isoformat()
    return AccessKey(key_id, secrets.token_urlsafe(30), created, description)


class ExposedCredentialsError(ServerError):
    """The credentials file became readable by other users while the server ran (HTTP 500).

    Its secrets may have been read, so no request is authenticated with them until it is private
    again; the client's message leaves out the path, the server log has it.
    """


class KeyFile:
    """The credentials file of one data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / CREDENTIALS_FILE_NAME
        self._cache: tuple[tuple[int, int, int], dict[str, AccessKey]] | None = None
        self._cache_lock = threading.Lock()

    def check_private(self) -> None:
        """Refuse a credentials file other users can read, as ssh refuses a readable private key."""
        if self.path.exists() and readable_by_others(self.path):
            mode = self.path.stat().st_mode & 0o777
            raise ValidationError(
                f"{self.path} is accessible by other users (mode {mode:o}); run: chmod 600 {self.path}"
            )

    def keys(self) -> list[AccessKey]:
        """Every key, oldest first; none when the file does not exist yet."""
        return list(self._by_id().values())

    def secret_for(self, access_key_id: str) -> str | None:
        """The secret of `access_key_id`, or None when the key is unknown (read per request, cached)."""
        key = self._by_id().get(access_key_id)
        return None if key is None else key.secret_access_key

    def create(self, description: str = "") -> AccessKey:
        key = new_access_key(description)
        self._update(lambda keys: [*keys, key])
        return key

    def delete(self, access_key_id: str) -> bool:
        """Remove a key; False when there was none with that id."""
        found = False

        def without(keys: list[AccessKey]) -> list[AccessKey]:
            nonlocal found
            kept = [key for key in keys if key.access_key_id != access_key_id]
            found = len(kept) != len(keys)
            return kept

        self._update(without)
        return found

    # ------------------------------------------------------------------------------------ internals

    def _by_id(self) -> dict[str, AccessKey]:
        """The keys, reread when the file changed; its mode is checked on every call (a chmod
        changes neither inode, mtime nor size, so the cache alone would never notice)."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return {}
        self._refuse_exposed(info.st_mode)
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        with self._cache_lock:
            if self._cache is None or self._cache[0] != stamp:
                with self.path.open("rb") as handle:
                    self._refuse_exposed(os.fstat(handle.fileno()).st_mode)  # the file actually read
                    fcntl.flock(handle, fcntl.LOCK_SH)
                    keys = _parse(self.path, handle.read())
                self._cache = (stamp, {key.access_key_id: key for key in keys})
            return self._cache[1]

    def _refuse_exposed(self, mode: int) -> None:
        if mode & 0o077:
            log.error(
                "%s is accessible by other users (mode %o): refusing every signed request until it is "
                "private again; run: chmod 600 %s (and consider its keys leaked: rotate them)",
                self.path, mode & 0o777, self.path,
            )  # fmt: skip
            raise ExposedCredentialsError(
                "The server's credentials file is accessible by other users, so the server refuses requests "
                "until it is private again; details are in the server log"
            )

    def _update(self, change: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "r+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            keys = change(_parse(self.path, handle.read()))
            document = {"keys": [asdict(key) for key in keys]}
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(document, indent=2).encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.path.chmod(PRIVATE_FILE_MODE)


def _parse(path: Path, data: bytes) -> list[AccessKey]:
    if not data.strip():
        return []
    try:
        document = json.loads(data)
        return [AccessKey(**entry) for entry in document["keys"]]
    except (ValueError, TypeError, KeyError) as exc:
        raise ValidationError(f"{path} is not a Kiln credentials file: {exc}") from exc
