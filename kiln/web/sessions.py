"""Dashboard sessions under `--auth sigv4`: a browser signs in once with an access key, then sends a cookie.

Page script cannot sign requests with SigV4 without holding the secret where any script on the page
could read it, so the dashboard trades the key pair for a random token kept in an HttpOnly,
SameSite=Strict cookie. Sessions live in this process's memory only: nothing about them reaches the
disk, and a restart signs every browser out. A session is worth no more than its key: it ends as
soon as `kiln keys delete` removes that key, because every use checks that the key still exists.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from kiln.access_keys import KeyFile
from kiln.errors import AuthenticationError, MissingAuthenticationTokenError, ServerError, ValidationError

logger = logging.getLogger(__name__)

SESSION_COOKIE = "kiln_session"
DEFAULT_LIFETIME = timedelta(hours=12)
# Only a right key pair creates a session; the bound keeps even a flood of right sign-ins (a script
# gone wrong) from growing memory: past it, the oldest session ends.
MAX_SESSIONS = 1000
SIGN_IN_REFUSED = "Sign-in refused: the access key id and secret access key do not match a key of this server."
SESSION_ENDED = (
    "Missing Authentication Token: the dashboard session has ended "
    "(expired, signed out, or its access key was deleted); sign in again"
)
# Compared against when the key id is unknown, so that an unknown id and a wrong secret take as long.
_UNKNOWN_KEY_SECRET = secrets.token_urlsafe(30)


@dataclass(frozen=True)
class Session:
    access_key_id: str
    created_at: datetime
    expires_at: datetime


class SessionStore:
    """Session tokens -> access keys, bounded in count and in time.

    Tokens are kept as their SHA-256 digests, so the lookup never compares secret text byte by byte
    and a memory dump of the table yields nothing a browser could present.
    """

    cookie = SESSION_COOKIE

    def __init__(
        self,
        keys: KeyFile,
        lifetime: timedelta = DEFAULT_LIFETIME,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.keys = keys
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()  # oldest first
        self._lock = threading.Lock()

    def sign_in(self, access_key_id: str, secret_access_key: str) -> tuple[str, Session]:
        """A new token for a right key pair; the refusal never says whether the id or the secret was wrong."""
        stored = self._secret(access_key_id)
        expected = (stored if stored is not None else _UNKNOWN_KEY_SECRET).encode()
        if not hmac.compare_digest(expected, secret_access_key.encode()) or stored is None:
            raise AuthenticationError(SIGN_IN_REFUSED)
        token = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(access_key_id, now, now + self.lifetime)
        with self._lock:
            self._drop_expired(now)
            while len(self._sessions) >= self.max_sessions:
                self._sessions.popitem(last=False)
            self._sessions[_digest(token)] = session
        return token, session

    def authenticate(self, token: str) -> Session:
        """The live session of `token`, whose key still exists; MissingAuthenticationToken otherwise."""
        digest = _digest(token)
        now = self.clock()
        with self._lock:
            session = self._sessions.get(digest)
            if session is not None and session.expires_at <= now:
                del self._sessions[digest]
                session = None
        if session is None:
            raise MissingAuthenticationTokenError(SESSION_ENDED)
        if self._secret(session.access_key_id) is None:  # `kiln keys delete` ends the key's sessions
            self._end_sessions_of(session.access_key_id)
            raise MissingAuthenticationTokenError(SESSION_ENDED)
        return session

    def sign_out(self, token: str) -> bool:
        with self._lock:
            return self._sessions.pop(_digest(token), None) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _secret(self, access_key_id: str) -> str | None:
        try:
            return self.keys.secret_for(access_key_id)
        except ValidationError as exc:
            logger.error("cannot read the credentials file: %s", exc.message)
            raise ServerError("The server's credentials file is unreadable; details are in the server log") from None

    def _end_sessions_of(self, access_key_id: str) -> None:
        with self._lock:
            for digest in [d for d, s in self._sessions.items() if s.access_key_id == access_key_id]:
                del self._sessions[digest]

    def _drop_expired(self, now: datetime) -> None:
        for digest in [d for d, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[digest]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
