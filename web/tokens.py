"""Access tokens: mint for a caller, revoke by jti (which pauses the schedules acting with
the token, and says which)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from engine import tokens
from engine.auth import MAX_SUB_LENGTH
from web import schemas, serialize
from web.auth import current_caller, require_scopes
from web.db import get_session
from web.dispatch import send

bp = Blueprint("tokens", __name__, url_prefix="/admin/tokens")

MINT = {
    "type": "object",
    "required": ["sub", "scopes"],
    "additionalProperties": False,
    "properties": {
        "sub": {"type": "string", "minLength": 1, "maxLength": MAX_SUB_LENGTH},
        "scopes": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "ttl": {"type": ["integer", "string"]},
    },
}
REVOKE = {
    "type": "object",
    "required": ["jti"],
    "additionalProperties": False,
    "properties": {
        "jti": {"type": "string", "minLength": 1, "maxLength": tokens.MAX_JTI_LENGTH},
        "reason": {"type": "string", "maxLength": 1000},
    },
}


@bp.post("")
@require_scopes("admin.tokens")
def mint_token() -> Any:
    body = schemas.json_body(MINT)
    session = get_session()
    minted = tokens.mint(
        session,
        current_app.config["SETTINGS"],
        current_caller(),
        sub=body["sub"],
        scopes=body["scopes"],
        ttl=body.get("ttl", "1h"),
    )
    session.commit()
    return {
        "token": minted.token,
        "jti": minted.jti,
        "expires_at": serialize.timestamp(minted.expires_at),
    }, 201


@bp.post("/revoke")
@require_scopes("admin.tokens")
def revoke_token() -> Any:
    body = schemas.json_body(REVOKE)
    session = get_session()
    revocation = tokens.revoke(session, current_caller(), body["jti"], body.get("reason"))
    session.commit()
    send(revocation.work)
    current_app.extensions["engine.revocations"].publish(revocation)
    return {
        "jti": revocation.jti,
        "expires_at": serialize.timestamp(revocation.expires_at),
        "paused_schedules": [
            {"id": schedule.id, "name": schedule.name, "owner": schedule.created_by}
            for schedule in revocation.paused
        ],
    }
