"""The front door: refuse what a browser on another site (or a DNS-rebinding page) can send.

A page the user merely visits can make the browser send a "simple" cross-site request - a POST with
`Content-Type: text/plain`, no preflight - to any address, loopback included; and a page on a
domain that the attacker re-points at 127.0.0.1 becomes "same-origin" with the server. On an
unauthenticated loopback server either would run commands as the server's user. AWS clients never
look like that, so the door admits only what they send:

- a `Host` that is one of the server's own names (`HostNames`), so a rebound domain is refused;
- no `Origin` other than the server's own, and no `Sec-Fetch-Site` of another site, on anything but
  the dashboard's static pages and `/healthz` (which a link from anywhere may open);
- a body only with a content type AWS's SDKs send (`application/json`, `application/x-amz-json-1.x`),
  which a browser cannot send cross-site without a CORS preflight, and Kiln answers none. The one
  exception is a file uploaded to the relay (`PUT /kiln/v1/relay/...`, any type): a browser never
  sends a PUT cross-site without a preflight either.

It runs before authentication: it costs a few header lookups and needs no secret.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from kiln.config import WILDCARD_BINDS
from kiln.errors import AuthenticationError, ClientError
from kiln.relay_access import RELAY_PREFIX

# What botocore sends: rest-json (Batch) `application/json`, json (CloudWatch Logs) `x-amz-json-1.1`.
API_CONTENT_TYPES = frozenset({"application/json", "application/x-amz-json-1.0", "application/x-amz-json-1.1"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})
# Fetch metadata a browser sends: anything but these comes from another origin's page.
SAME_ORIGIN_FETCH_SITES = frozenset({"same-origin", "none"})
_SAFE_METHODS = frozenset({"GET", "HEAD"})


class CrossSiteRequestError(AuthenticationError):
    """A request a browser sent on behalf of another site's page (HTTP 403)."""

    aws_code = "AccessDeniedException"


@dataclass(frozen=True)
class HostNames:
    """The names a `Host` header may carry: loopback, the bind address, and configured extras.

    A server bound to a wildcard address answers on every address the machine has, so any IP
    literal is its own name there; a DNS name is accepted only when configured (`allowed_hosts`),
    because a name is exactly what a rebinding attack controls.
    """

    names: frozenset[str]
    any_address: bool

    @classmethod
    def for_server(cls, bind_host: str, extra: Iterable[str] = ()) -> HostNames:
        names = {name.lower() for name in LOOPBACK_NAMES}
        names.update(_normalised(name) for name in (bind_host, *extra) if name not in WILDCARD_BINDS)
        return cls(frozenset(names), bind_host in WILDCARD_BINDS)

    def admits(self, host_header: str) -> bool:
        name = _host_name(host_header)
        if name is None:
            return False
        if name in self.names or _normalised(host_header) in self.names:
            return True
        address = _ip_address(name)
        return address is not None and (address.is_loopback or self.any_address)


def _host_name(host_header: str) -> str | None:
    """The name part of `host[:port]` / `[v6]:port`, lower-cased; None when it is not one."""
    try:
        parts = urlsplit(f"//{host_header.strip()}")
        hostname = parts.hostname
        _ = parts.port  # raises on a port that is not a number
    except ValueError:
        return None
    return hostname or None


def _normalised(name: str) -> str:
    return name.strip().lower().strip("[]")


def _ip_address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class FrontDoorMiddleware:
    """Refuses foreign `Host`s, cross-site requests and non-API bodies before anything else runs."""

    def __init__(self, app: ASGIApp, hosts: HostNames, open_paths: Iterable[str] = ("/healthz",)) -> None:
        self.app = app
        self.hosts = hosts
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.check(scope)
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> None:
        headers = Headers(scope=scope)
        path, method = scope["path"], scope["method"]
        if path in self.open_paths and method in _SAFE_METHODS:
            return  # liveness, from a load balancer by any name
        host = headers.get("host", "")
        if not self.hosts.admits(host):
            raise ClientError(
                f"Host {host[:100]!r} is not one of this server's names; if clients reach it by that name, "
                "add it to allowed_hosts in the [server] table of kiln.toml"
            )
        if not _is_page_navigation(path, method):
            _check_same_origin(headers, host)
        if not (method == "PUT" and path.startswith(RELAY_PREFIX)):
            _check_content_type(headers)


def _is_page_navigation(path: str, method: str) -> bool:
    """The dashboard's pages and files: a link from any site may open them; they hold no data."""
    return method in _SAFE_METHODS and (path == "/ui" or path.startswith("/ui/"))


def _check_same_origin(headers: Headers, host: str) -> None:
    origin = headers.get("origin")
    if origin is not None and _origin_netloc(origin) != host.strip().lower():
        raise CrossSiteRequestError(
            f"Cross-origin requests are refused: Origin {origin[:100]!r} is not this server's own (http://{host[:100]})"
        )
    site = headers.get("sec-fetch-site")
    if site is not None and site.lower() not in SAME_ORIGIN_FETCH_SITES:
        raise CrossSiteRequestError(f"Cross-site requests are refused (Sec-Fetch-Site: {site[:40]})")


def _origin_netloc(origin: str) -> str | None:
    """`host[:port]` of an `Origin` (`null` and anything but http(s) have none)."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        return None
    return parts.netloc.lower()


def _check_content_type(headers: Headers) -> None:
    """A body must be JSON as an AWS SDK sends it; an empty body may carry no type at all."""
    content_type = headers.get("content-type")
    if content_type is None:
        if _has_body(headers):
            raise ClientError(f"A request body needs a Content-Type: one of {', '.join(sorted(API_CONTENT_TYPES))}")
        return
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type not in API_CONTENT_TYPES:
        raise ClientError(
            f"Unsupported Content-Type {content_type[:100]!r}: send one of {', '.join(sorted(API_CONTENT_TYPES))}"
        )


def _has_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    return "transfer-encoding" in headers or (length is not None and length.strip() not in ("", "0"))
