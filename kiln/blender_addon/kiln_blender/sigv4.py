"""AWS Signature Version 4 with the standard library only (Blender's Python has no botocore).

Signs an HTTP request the way botocore's `SigV4Auth` does for the services the add-on calls
(the Batch REST-JSON API, a Kiln server's relay, S3 uploads): the canonical request over the
method, the URI-encoded path, the sorted query, the signed headers (`host`, `x-amz-*`,
`content-type`) and the payload's SHA-256 (or `UNSIGNED-PAYLOAD` for a streamed upload). A unit
test compares its signatures with botocore's, byte for byte.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_SIGNED_NAMES = ("content-type", "host")  # and every x-amz-* header


def sign(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    *,
    access_key_id: str,
    secret_access_key: str,
    region: str,
    service: str,
    session_token: str = "",
    now: datetime | None = None,
) -> dict[str, str]:
    """The headers to send: `headers` plus Host, X-Amz-Date, (X-Amz-Security-Token) and Authorization.

    `body=None` signs an unsigned payload (the body is streamed and not hashed): the request then
    carries `X-Amz-Content-SHA256: UNSIGNED-PAYLOAD`, as S3 and Kiln's relay accept.
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    timestamp = moment.strftime(TIMESTAMP_FORMAT)
    day = timestamp[:8]
    parts = urlsplit(url)
    out = {name: value for name, value in headers.items() if name.lower() not in {"authorization", "x-amz-date"}}
    out["Host"] = _host(parts.scheme, parts.netloc)
    out["X-Amz-Date"] = timestamp
    if session_token:
        out["X-Amz-Security-Token"] = session_token
    if body is None:
        out["X-Amz-Content-SHA256"] = UNSIGNED_PAYLOAD
        payload_hash = UNSIGNED_PAYLOAD
    else:
        payload_hash = out.get("X-Amz-Content-SHA256") or hashlib.sha256(body).hexdigest()
    signed = _headers_to_sign(out)
    signed_names = ";".join(sorted(signed))
    canonical = "\n".join(
        [
            method.upper(),
            _canonical_path(parts.path, encode=service != "s3"),
            _canonical_query(parts.query),
            "".join(f"{name}:{signed[name]}\n" for name in sorted(signed)),
            signed_names,
            payload_hash,
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, timestamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _signing_key(secret_access_key, day, region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (
        f"{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={signed_names}, Signature={signature}"
    )
    return out


def _host(scheme: str, netloc: str) -> str:
    """The Host header as botocore writes it: without a default port."""
    host = netloc.rpartition("@")[2]
    default = {"http": ":80", "https": ":443"}.get(scheme.lower())
    if default and host.endswith(default):
        host = host[: -len(default)]
    return host


def _headers_to_sign(headers: dict[str, str]) -> dict[str, str]:
    signed: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in _SIGNED_NAMES or lower.startswith("x-amz-"):
            signed[lower] = " ".join(str(value).split())
    return signed


def _canonical_path(path: str, encode: bool) -> str:
    """The path percent-encoded once more (`quote(path, safe='/~')`, as botocore does for every
    service but S3), or as sent (S3)."""
    path = path or "/"
    return quote(path, safe="/~") if encode else path


def _canonical_query(query: str) -> str:
    """The URL's query (already percent-encoded by the caller) sorted by name, then value."""
    if not query:
        return ""
    pairs = [item.partition("=")[::2] for item in query.split("&")]
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    key = hmac.new(f"AWS4{secret}".encode(), day.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key
