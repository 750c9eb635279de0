"""The caller's credentials, carried from HTTP to gRPC; the dashboard's login.

The gateway authenticates nobody itself: the services do, from the token the
gateway forwards as ``authorization: Bearer`` metadata. A token comes from the
request's ``Authorization`` header or, for the dashboard, from the session
cookie a login sets (HttpOnly, so page scripts never see it; SameSite=Strict,
so no other site's page sends it; Secure on a TLS listener).

A request authenticated by the cookie that changes anything must come from the
dashboard's own origin (its ``Origin``, else ``Referer``): with SameSite=Strict
that makes cross-site request forgery fail twice over. A request carrying the
header needs no such check, since no other site can make a browser send it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from baton.common.errors import PermissionDenied

COOKIE = "baton_session"
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def token_of(request: web.Request) -> tuple[str | None, bool]:
    """The caller's token and whether it came from the session cookie."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        return (token.strip() or None) if scheme.lower() == "bearer" else None, False
    cookie = request.cookies.get(COOKIE)
    return (cookie, True) if cookie else (None, False)


def metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata that carries ``token`` to the services."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def check_origin(request: web.Request) -> None:
    """Refuse a state-changing request from another origin (PermissionDenied)."""
    if request.method in _SAFE_METHODS:
        return
    own = f"{request.scheme}://{request.host}"
    origin = request.headers.get("Origin")
    if origin is None and "Referer" in request.headers:
        parts = urlsplit(request.headers["Referer"])
        origin = f"{parts.scheme}://{parts.netloc}"
    if origin != own:
        raise PermissionDenied(
            message=f"{request.method} {request.path}: a cookie-authenticated change must come from "
            f"this dashboard ({own}), not {origin or 'an unnamed origin'}",
            reason="CROSS_SITE_REQUEST",
        )


def set_session(response: web.StreamResponse, token: str, secure: bool) -> None:
    """Keep ``token`` in the session cookie (until the browser closes)."""
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=secure, path="/")


def clear_session(response: web.StreamResponse, secure: bool) -> None:
    response.del_cookie(COOKIE, path="/", secure=secure, httponly=True, samesite="Strict")
