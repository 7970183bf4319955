"""Bearer tokens (flask-jwt-extended, HS256 pinned, key picked by `kid`) and scopes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, request
from flask_jwt_extended import JWTManager, get_jwt, verify_jwt_in_request
from jwt import InvalidTokenError

from engine import payloads
from engine.auth import ALGORITHM, Caller, claim_problems, verification_keys
from engine.cache import LRUCache
from engine.config import Settings
from engine.errors import PermissionDenied
from engine.revocations import RevocationList
from web import rate_limits
from web.errors import problem

F = TypeVar("F", bound=Callable[..., Any])
BEARER = {"WWW-Authenticate": 'Bearer realm="engine"'}
# Accepted tokens each API process remembers (RememberingJWTManager).
ACCEPTED_TOKENS = 4096


def init_app(app: Flask) -> None:
    settings: Settings = app.config["SETTINGS"]
    app.config.update(
        JWT_SECRET_KEY=settings.jwt_secret,
        JWT_ALGORITHM=ALGORITHM,
        JWT_DECODE_ALGORITHMS=[ALGORITHM],
        JWT_TOKEN_LOCATION=["headers"],
        JWT_DECODE_ISSUER=settings.jwt_issuer,
        JWT_ENCODE_ISSUER=settings.jwt_issuer,
        JWT_IDENTITY_CLAIM="sub",
        JWT_ERROR_MESSAGE_KEY="detail",
    )
    manager = RememberingJWTManager(app)
    keys = verification_keys(settings)

    @manager.decode_key_loader
    def _key_for(header: dict[str, Any], payload: dict[str, Any]) -> str:
        # The first hook that sees the claims, before the revocation check queries by jti:
        # no column can store a NUL character or a lone surrogate (engine.payloads).
        for claim in ("sub", "jti"):
            problem = payloads.unstorable(str(payload.get(claim, "")))
            if problem:
                raise InvalidTokenError(f"the {claim} claim {problem}")
        key = keys.get(header.get("kid", ""))
        if key is None:
            raise InvalidTokenError("the token was signed with an unknown key")
        return key

    def unauthorized(detail: str) -> Response:
        return problem(401, "Unauthorized", detail, code="unauthorized", headers=BEARER)

    manager.unauthorized_loader(lambda reason: unauthorized(reason))
    manager.invalid_token_loader(lambda reason: unauthorized(f"invalid token: {reason}"))
    manager.expired_token_loader(lambda _h, _p: unauthorized("the token has expired"))
    manager.revoked_token_loader(lambda _h, _p: unauthorized("the token has been revoked"))
    manager.needs_fresh_token_loader(lambda _h, _p: unauthorized("a fresh token is required"))
    manager.user_lookup_error_loader(lambda _h, _p: unauthorized("unknown subject"))
    # Tokens we mint always carry these; one without them never expires or cannot be revoked.
    manager.token_verification_loader(lambda _h, payload: not claim_problems(payload))
    manager.token_verification_failed_loader(
        lambda _h, payload: unauthorized("invalid token: " + "; ".join(claim_problems(payload)))
    )
    # Revoked jtis: this process's copy (engine.revocations), the database while it is not trusted.
    revocations = RevocationList.for_settings(settings, app.extensions["engine.read_sessions"])
    manager.token_in_blocklist_loader(
        lambda _h, payload: revocations.is_revoked(payload.get("jti"), payload.get("exp"))
    )
    app.extensions["engine.revocations"] = revocations
    app.extensions["engine.jwt"] = manager


class RememberingJWTManager(JWTManager):
    """Remembers the tokens that passed every check of a request in this process: a client
    sends the same token on request after request, and the same string verifies the same
    way against this process's keys, which never change while it runs. Whether it has
    expired is checked on every request, and revocation too (request_claims)."""

    def __init__(self, app: Flask | None = None) -> None:
        self._accepted: LRUCache[str, dict[str, Any]] = LRUCache(ACCEPTED_TOKENS)
        self._lock = threading.Lock()
        super().__init__(app)

    def accepted(self, encoded_token: str) -> dict[str, Any] | None:
        """The claims of a token a request of this process was allowed with, while it has
        not expired; None otherwise. The caller must not change them."""
        with self._lock:
            claims = self._accepted.get(encoded_token)
        if claims is not None and claims["exp"] > time.time():
            return claims
        return None

    def accept(self, encoded_token: str, claims: dict[str, Any]) -> None:
        """Remember a token that passed every check (see request_claims)."""
        if isinstance(claims.get("exp"), int | float):
            with self._lock:
                self._accepted[encoded_token] = dict(claims)


def current_caller() -> Caller:
    return g.caller


def request_claims() -> dict[str, Any]:
    """The claims of the request's bearer token, verified. A token that passed every check
    of an earlier request in this process is answered from memory, its expiry and revocation
    checked again: flask-jwt-extended would decode its header and payload once more on each
    request. Anything else (a token not accepted yet, expired, revoked, refused before)
    goes through flask-jwt-extended, which verifies it or answers the error."""
    manager: RememberingJWTManager = current_app.extensions["engine.jwt"]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Bearer":
        if scheme.lower() == "bearer":
            # A scheme's name is case-insensitive (RFC 9110, section 11.1); flask-jwt-extended
            # looks for "Bearer" as written.
            request.environ["HTTP_AUTHORIZATION"] = "Bearer " + token
        else:
            token = ""
    if token:
        claims = manager.accepted(token)
        if claims is not None and not current_app.extensions["engine.revocations"].is_revoked(
            claims["jti"], claims["exp"]
        ):
            return claims
    verify_jwt_in_request()
    claims = get_jwt()
    if token:
        manager.accept(token, claims)
    return claims


def require_scopes(*required: str) -> Callable[[F], F]:
    """Reject a request without a valid token (401) or without every scope named (403)."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            claims = request_claims()
            scopes = claims.get("scopes") or []
            if not isinstance(scopes, list):
                scopes = []
            # Set before the scope check: the access log names the caller of a 403 too.
            caller = g.caller = Caller(
                str(claims["sub"]), tuple(str(s) for s in scopes), jti=str(claims["jti"])
            )
            # Every request of a known caller counts, a refused one (403) too.
            rate_limits.count(request.method)
            missing = [scope for scope in required if not caller.can(scope)]
            if missing:
                raise PermissionDenied(
                    f"this needs the scope {', '.join(missing)}",
                    errors=[
                        {"field": "scopes", "message": f"missing {scope}"} for scope in missing
                    ],
                )
            current_app.logger.debug("caller %s", caller.sub)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
