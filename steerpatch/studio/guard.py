"""Who may talk to the studio: loopback `Host` names only, and a per-session token for every POST.

The studio listens on 127.0.0.1, but a web page the user visits can still reach it: by DNS
rebinding (its own name resolving to 127.0.0.1, so the browser sends `Host: evil.example`) or by a
cross-site form POST. The `Host` check stops the first; the token, which only a page served by this
studio can read, stops the second, since a foreign page can neither read it nor send the custom header
without a CORS preflight the studio never grants.
"""

from __future__ import annotations

import secrets

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_HEADER = "x-steerpatch-token"
TOKEN_PLACEHOLDER = "{{STEERPATCH_TOKEN}}"
SAFE_METHODS = ("GET", "HEAD")


def new_token() -> str:
    """A fresh random session token (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)


def host_name(host_header: str) -> str:
    """The name part of a `Host` header, lower-cased, without port or IPv6 brackets.

    Example:
        >>> host_name("[::1]:8765"), host_name("LocalHost:80"), host_name("127.0.0.1")
        ('::1', 'localhost', '127.0.0.1')
    """
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class StudioGuard:
    """ASGI middleware: refuse (403, `{"error": ...}`) a foreign `Host`, and a POST without the token.

    Args:
        app: the studio app.
        token: the session token the page is given.
        allow_hosts: names accepted besides loopback ones (e.g. a name in /etc/hosts).
    """

    def __init__(self, app: ASGIApp, token: str, allow_hosts: tuple[str, ...] = ()) -> None:
        self.app = app
        self.token = token
        self.hosts = {*LOOPBACK_HOSTS, *(host_name(h) for h in allow_hosts)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if host_name(host) not in self.hosts:
            message = (
                f"Host {host!r} is not this machine's loopback name; open the studio at http://127.0.0.1:<port>/, "
                f"or start it with --allow-host {host_name(host) or 'NAME'} if that name is yours"
            )
            await JSONResponse({"error": message}, status_code=403)(scope, receive, send)
            return
        if scope["method"] not in SAFE_METHODS and not secrets.compare_digest(
            headers.get(TOKEN_HEADER, "").encode(), self.token.encode()
        ):
            message = (
                f"{scope['method']} {scope['path']} needs the studio's session token in the {TOKEN_HEADER} header; "
                "reload the studio page to get it"
            )
            await JSONResponse({"error": message}, status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)
