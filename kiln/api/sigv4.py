"""AWS Signature Version 4 authentication, as ASGI middleware in front of every route but /healthz.

The signature is recomputed with botocore's own `SigV4Auth` over the request as it arrived (method,
raw path, raw query, the headers the client says it signed, the body), so Kiln agrees with every
AWS SDK byte for byte without a second implementation of the canonical-request rules. Refusals are
AWS's: 403 with `MissingAuthenticationTokenException`, `IncompleteSignatureException`,
`UnrecognizedClientException` or `InvalidSignatureException`, mapped by `kiln.api.errors`.

A browser cannot sign (it would need the secret in page script), so the dashboard signs in once and
then sends a session cookie (`kiln.web.sessions`); a request without an `Authorization` header is
authenticated by that cookie instead. The cookie is SameSite=Strict, and a state-changing request it
authenticates must also carry an `Origin` equal to the server's own: a page on another port of the
same host is "same-site", so SameSite alone would let it use the session.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Protocol
from urllib.parse import urlsplit

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials
from starlette.datastructures import Headers
from starlette.requests import Request, cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.access_keys import KeyFile
from kiln.api.app import DEFAULT_MAX_BODY_BYTES, read_body
from kiln.errors import (
    AuthenticationError,
    IncompleteSignatureError,
    InvalidSignatureError,
    MissingAuthenticationTokenError,
    ServerError,
    UnrecognizedClientError,
    ValidationError,
)
from kiln.relay_access import JOB_TOKEN_HEADER, RELAY_PREFIX

logger = logging.getLogger(__name__)

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_CLOCK_SKEW = timedelta(minutes=15)
# The Batch API, and the CloudWatch Logs API served on the same endpoint.
SIGNED_SERVICES = frozenset({"batch", "logs"})
# The one route answered unsigned: liveness, read-only. Matched on the decoded path (`/%68ealthz`
# is `/healthz`) and on the method, so no other method on that path (a POST with an `X-Amz-Target`,
# which the catch-all would serve) slips past the signature check.
OPEN_PATH = "/healthz"
PAYLOAD_HASH_HEADER = "x-amz-content-sha256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
OPEN_METHODS = frozenset({"GET", "HEAD"})
# Methods a session cookie authenticates without an Origin check: no route changes anything on them,
# and another origin cannot read their answers (Kiln sends no CORS headers).
SAFE_METHODS = frozenset({"GET", "HEAD"})
CROSS_ORIGIN = (
    "A dashboard session authenticates a state-changing request only from the dashboard's own origin "
    "(its Origin header must be this server's scheme://host:port); sign API clients with SigV4 instead"
)

MISSING_TOKEN = "Missing Authentication Token"
UNKNOWN_KEY = "The security token included in the request is invalid."
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)
_TIMESTAMP = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_HEX_SIGNATURE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Authorization:
    """The parts of an `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...` header."""

    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(header: str) -> Authorization:
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise IncompleteSignatureError(f"Unsupported Authorization algorithm {algorithm[:40]!r}; use {ALGORITHM}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields[key] = value
    for name in ("Credential", "SignedHeaders", "Signature"):
        if not fields.get(name):
            raise IncompleteSignatureError(f"Authorization header requires a '{name}' parameter")
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope):
        raise IncompleteSignatureError(
            "Credential must have the form <access key id>/<yyyymmdd>/<region>/<service>/aws4_request"
        )
    signed = tuple(fields["SignedHeaders"].lower().split(";"))
    return Authorization(scope[0], scope[1], scope[2], scope[3], signed, fields["Signature"])


class _SignedHeadersOnly(SigV4Auth):
    """botocore's signer, restricted to the headers the client listed in SignedHeaders."""

    def __init__(self, credentials: Credentials, service: str, region: str, signed: tuple[str, ...]) -> None:
        super().__init__(credentials, service, region)
        self._signed = frozenset(signed)

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        selected = HTTPHeaders()
        for name, value in request.headers.items():
            if name.lower() in self._signed:
                selected[name.lower()] = value
        return selected


def request_timestamp(headers: HTTPHeaders) -> datetime:
    """The signing time: `X-Amz-Date` (basic ISO 8601), else an RFC 7231 `Date` header."""
    amz_date = headers.get("x-amz-date")
    if amz_date is not None:
        if not _TIMESTAMP.fullmatch(amz_date):
            raise IncompleteSignatureError(
                f"X-Amz-Date must be in ISO 8601 basic format (YYYYMMDDTHHMMSSZ), got {amz_date[:40]!r}"
            )
        try:
            return datetime.strptime(amz_date, SIGV4_TIMESTAMP).replace(tzinfo=UTC)
        except ValueError:  # the right shape, an impossible date (month 13, second 61)
            raise IncompleteSignatureError(f"X-Amz-Date is not a valid date: {amz_date!r}") from None
    date = headers.get("date")
    if date is None:
        raise IncompleteSignatureError("The request must carry an X-Amz-Date or a Date header")
    try:
        return parsedate_to_datetime(date).astimezone(UTC)
    except (TypeError, ValueError, OverflowError):
        raise IncompleteSignatureError(f"Date header is not an RFC 7231 date: {date[:40]!r}") from None


def check_clock_skew(signed_at: datetime, now: datetime) -> None:
    """AWS refuses signatures more than 15 minutes old (replays) or more than 15 minutes ahead."""
    shown = signed_at.strftime(SIGV4_TIMESTAMP)
    if signed_at < now - MAX_CLOCK_SKEW:
        earliest = (now - MAX_CLOCK_SKEW).strftime(SIGV4_TIMESTAMP)
        raise InvalidSignatureError(
            f"Signature expired: {shown} is now earlier than {earliest} ({now.strftime(SIGV4_TIMESTAMP)} - 15 min.)"
        )
    if signed_at > now + MAX_CLOCK_SKEW:
        latest = (now + MAX_CLOCK_SKEW).strftime(SIGV4_TIMESTAMP)
        raise InvalidSignatureError(
            f"Signature not yet current: {shown} is still later than {latest} ({now.strftime(SIGV4_TIMESTAMP)} + 15 min.)"
        )


@dataclass(frozen=True)
class ReceivedRequest:
    """What the verifier needs of an HTTP request, as it came off the wire."""

    method: str
    raw_path: str
    query_string: str
    headers: list[tuple[str, str]]
    body: bytes
    payload_unsigned: bool = False  # only a relay upload: its body is streamed, not hashed


class SignatureVerifier:
    """Checks one request against the key file; raises an AuthenticationError, returns the key id."""

    def __init__(self, keys: KeyFile, region: str, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.keys = keys
        self.region = region
        self.clock = clock

    def verify(self, received: ReceivedRequest) -> str:
        headers = HTTPHeaders()
        for name, value in received.headers:
            headers[name] = value
        header = headers.get("authorization")
        if header is None:
            raise MissingAuthenticationTokenError(MISSING_TOKEN)
        auth = parse_authorization(header)
        signed_at = request_timestamp(headers)
        secret = self._secret(auth.access_key_id)
        self._check_scope(auth, signed_at)
        check_clock_skew(signed_at, self.clock())
        if not received.payload_unsigned:
            self._check_payload_hash(headers, received.body)
        if "host" not in auth.signed_headers:
            raise InvalidSignatureError("The host header must be signed (SignedHeaders must list host)")
        if not _HEX_SIGNATURE.fullmatch(auth.signature):
            raise InvalidSignatureError(SIGNATURE_MISMATCH)
        try:
            expected = self._signature(received, headers, auth, secret, signed_at)
        except ValueError:  # a Host header no URL can hold: the client cannot have signed this request
            raise InvalidSignatureError(SIGNATURE_MISMATCH) from None
        if not hmac.compare_digest(expected.encode(), auth.signature.encode()):
            raise InvalidSignatureError(SIGNATURE_MISMATCH)
        return auth.access_key_id

    def _secret(self, access_key_id: str) -> str:
        try:
            secret = self.keys.secret_for(access_key_id)
        except ValidationError as exc:
            logger.error("cannot read the credentials file: %s", exc.message)
            raise ServerError("The server's credentials file is unreadable; details are in the server log") from None
        if secret is None:
            raise UnrecognizedClientError(UNKNOWN_KEY)
        return secret

    def _check_scope(self, auth: Authorization, signed_at: datetime) -> None:
        if auth.date != signed_at.strftime("%Y%m%d"):
            raise InvalidSignatureError(
                f"Date in Credential scope ({auth.date[:8]}) does not match the request date {signed_at:%Y%m%d}"
            )
        if auth.region != self.region:
            raise InvalidSignatureError(
                f"Credential should be scoped to a valid region, not '{auth.region[:40]}'; this server's region is '{self.region}'"
            )
        if auth.service not in SIGNED_SERVICES:
            allowed = "' or '".join(sorted(SIGNED_SERVICES))
            raise InvalidSignatureError(
                f"Credential should be scoped to correct service: '{allowed}', not '{auth.service[:40]}'"
            )

    @staticmethod
    def _check_payload_hash(headers: HTTPHeaders, body: bytes) -> None:
        """botocore signs `X-Amz-Content-SHA256` instead of the body when sent: it must be the body's."""
        declared = headers.get("x-amz-content-sha256")
        actual = hashlib.sha256(body).hexdigest().encode()
        if declared is not None and not hmac.compare_digest(declared.lower().encode("latin-1"), actual):
            raise InvalidSignatureError("The x-amz-content-sha256 header does not match the SHA-256 of the body")

    @staticmethod
    def _signature(
        received: ReceivedRequest, headers: HTTPHeaders, auth: Authorization, secret: str, signed_at: datetime
    ) -> str:
        host = headers.get("host", "localhost")
        url = f"http://{host}{received.raw_path}"
        if received.query_string:
            url += f"?{received.query_string}"
        request = AWSRequest(method=received.method, url=url, data=received.body)
        for name, value in received.headers:
            request.headers[name] = value
        request.context["timestamp"] = signed_at.strftime(SIGV4_TIMESTAMP)
        signer = _SignedHeadersOnly(
            Credentials(auth.access_key_id, secret), auth.service, auth.region, auth.signed_headers
        )
        canonical = signer.canonical_request(request)
        return str(signer.signature(signer.string_to_sign(request, canonical), request))


class Session(Protocol):
    @property
    def access_key_id(self) -> str: ...


class Sessions(Protocol):
    """What the middleware needs of the dashboard's session store (`kiln.web.sessions.SessionStore`)."""

    cookie: str

    def authenticate(self, token: str) -> Session: ...


def check_same_origin(headers: Headers) -> None:
    """A browser sends `Origin` on every non-GET request; it must name the host the request is sent to.

    The scheme is not compared: behind a TLS proxy the page is `https://` while Kiln sees plain HTTP.
    """
    origin, host = headers.get("origin"), headers.get("host")
    try:
        parts = urlsplit(origin) if origin is not None else None
    except ValueError:  # e.g. an unclosed IPv6 bracket
        parts = None
    if (
        parts is None
        or not host
        or parts.scheme not in ("http", "https")
        or parts.path
        or parts.query
        or parts.netloc.lower() != host.lower()
    ):
        raise AuthenticationError(CROSS_ORIGIN)


class SigV4Middleware:
    """Refuses every request but the open ones unless it is signed with a known key or a session's.

    Open: `GET`/`HEAD /healthz`, and the `(method, path)` pairs in `open_routes` (the dashboard's
    static files and its sign-in), compared on the decoded path the router dispatches on, so no
    encoding of another path (`/ui/../v1/...`, `/ui/%2e%2e/...`) matches one of them.
    The body of a signed request is read (up to the API's largest payload) to check its hash, then
    replayed to the app.
    """

    def __init__(
        self,
        app: ASGIApp,
        verifier: SignatureVerifier,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        sessions: Sessions | None = None,
        open_routes: frozenset[tuple[str, str]] = frozenset(),
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes
        self.sessions = sessions
        self.open_routes = open_routes

    def _is_open(self, scope: Scope) -> bool:
        method, path = scope["method"], scope["path"]
        return (path == OPEN_PATH and method in OPEN_METHODS) or (method, path) in self.open_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_open(scope):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.sessions is not None and "authorization" not in headers:
            token = cookie_parser(headers.get("cookie", "")).get(self.sessions.cookie)
            if token:
                session = self.sessions.authenticate(token)
                if scope["method"] not in SAFE_METHODS:
                    check_same_origin(headers)
                state = scope.setdefault("state", {})
                state["access_key_id"] = session.access_key_id
                state["session"] = session
                await self.app(scope, receive, send)
                return
        relay = scope["path"].startswith(RELAY_PREFIX)
        if relay and JOB_TOKEN_HEADER in headers and "authorization" not in headers:
            await self.app(scope, receive, send)  # a job's relay token: the relay's routes check it
            return
        # A relay upload may be gigabytes: signed with an unsigned payload, as S3 allows, it streams.
        streamed = relay and scope["method"] == "PUT" and headers.get(PAYLOAD_HASH_HEADER) == UNSIGNED_PAYLOAD
        body = b"" if streamed else await read_body(Request(scope, receive), self.max_body_bytes)
        raw_path = scope.get("raw_path") or scope["path"].encode()
        received = ReceivedRequest(
            method=scope["method"],
            raw_path=raw_path.decode("latin-1"),
            query_string=scope.get("query_string", b"").decode("latin-1"),
            headers=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]],
            body=body,
            payload_unsigned=streamed,
        )
        key_id = self.verifier.verify(received)
        scope.setdefault("state", {})["access_key_id"] = key_id
        await self.app(scope, receive if streamed else _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then defers to the real one."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
