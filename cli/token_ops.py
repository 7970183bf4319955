"""`engine token rotate|inspect|revoke`: signing secrets and single tokens."""

from __future__ import annotations

import secrets
import shlex
import sys
from datetime import UTC, datetime

import click
import jwt

from cli.context import emit, operator, require_database, session, settings
from engine import tokens
from engine.auth import ALGORITHM, claim_problems, verification_keys
from engine.db import make_engine, make_session_factory
from engine.revocations import RevocationList

SECRET_BYTES = 32
ACCEPTED = "accepted"


def rotation_steps(new_secret: str, secret_file: str, from_file: bool) -> str:
    """The rollout, for `make run` (secret in a file) and for docker compose (JWT_SECRET)."""
    quoted_file = shlex.quote(secret_file)
    source = (
        f"This machine signs with the secret in {secret_file} (JWT_SECRET is not set)."
        if from_file
        else "This machine signs with the secret in JWT_SECRET."
    )
    return f"""New signing secret (keep it secret; it is shown only now):

  {new_secret}

{source}

Planned rotation: tokens signed with the old secret keep working during a grace period.

  make run (JWT_SECRET unset; the secret lives in {secret_file}):
    1. Stop the stack (Ctrl-C in the terminal that runs `make run`).
    2. Keep the old secret as a previous one, then write the new one:
         export JWT_PREVIOUS_SECRETS="$(cat {quoted_file})"
         (umask 077 && printf '%s\\n' '{new_secret}' > {quoted_file})
    3. make run    (the API, worker and beat now sign with the new secret, and accept
                    both; mint fresh tokens with `engine token mint ...`)
    4. After the grace period (at least the longest token lifetime you issued):
         unset JWT_PREVIOUS_SECRETS
       and restart `make run` the same way.

  docker compose (JWT_SECRET and JWT_PREVIOUS_SECRETS in the shell or .env, with the
  FLOWER_BASIC_AUTH and GRAFANA_ADMIN_PASSWORD it also requires):
    1. export JWT_PREVIOUS_SECRETS="$JWT_SECRET"
       export JWT_SECRET='{new_secret}'
       (and save both wherever you keep them, e.g. .env)
    2. docker compose up -d api worker beat flower    (recreates them with the new values)
    3. After the grace period:
         export JWT_PREVIOUS_SECRETS=
         docker compose up -d api worker beat flower

Emergency (the secret leaked: every old token must stop working now): do the same, but
set only the new secret: skip JWT_PREVIOUS_SECRETS (unset it, or leave it empty), then
restart. Every token signed before is answered 401 at once; mint new ones.
"""


@click.command("rotate")
def rotate() -> None:
    """Print a new JWT signing secret and the steps to roll it out; changes nothing."""
    current = settings()
    secret_file = current.var_dir / "jwt_secret"
    from_file = secret_file.is_file() and secret_file.read_text().strip() == current.jwt_secret
    click.echo(rotation_steps(secrets.token_hex(SECRET_BYTES), str(secret_file), from_file))


@click.command("inspect")
@click.argument("token")
def inspect(token: str) -> None:
    """Show a token's header and claims, and whether this deployment would accept it (its
    signature, expiry and the revocations in the database); exit 1 when it would refuse it.
    TOKEN `-` reads it from standard input, out of `ps` and the shell's history."""
    if token == "-":
        token = sys.stdin.read().strip()
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        raise click.ClickException(f"not a token: {exc}") from exc
    verdict = _verdict(token, header, claims)
    expires = claims.get("exp")
    emit(
        {
            "header": header,
            "claims": claims,
            "expires_at": datetime.fromtimestamp(expires, UTC).isoformat()
            if isinstance(expires, int | float)
            else None,
            "verdict": verdict,
        }
    )
    if verdict != ACCEPTED:
        raise SystemExit(1)


def _verdict(token: str, header: dict[str, object], claims: dict[str, object]) -> str:
    current = settings()
    key = verification_keys(current).get(str(header.get("kid", "")))
    if key is None:
        return "refused: signed with a key this deployment does not have (rotated out?)"
    try:
        jwt.decode(token, key, algorithms=[ALGORITHM], issuer=current.jwt_issuer)
    except jwt.ExpiredSignatureError:
        return "refused: expired"
    except jwt.InvalidTokenError as exc:
        return f"refused: {exc}"
    problems = claim_problems(claims)
    if problems:
        return "refused: " + "; ".join(problems)
    require_database(current)
    db_engine = make_engine(current)
    try:
        # No Redis client: the database is the truth the API's copies load from.
        revocations = RevocationList(make_session_factory(db_engine, read_only=True), None)
        if revocations.is_revoked(str(claims.get("jti") or "")):
            return "refused: revoked"
    finally:
        db_engine.dispose()
    return ACCEPTED


@click.command("revoke")
@click.argument("jti")
@click.option("--reason", default=None, help="Why (recorded in the audit trail).")
def revoke(jti: str, reason: str | None) -> None:
    """Revoke the token whose jti is JTI (`engine token inspect TOKEN` shows it); the
    schedules acting with it are paused, each named."""
    with session() as current:
        revocation = tokens.revoke(current, operator(), jti, reason)
    revocation.work.count_committed()
    db_engine = make_engine(settings())
    try:
        revocations = RevocationList.for_settings(
            settings(), make_session_factory(db_engine, read_only=True)
        )
        revocations.publish(revocation)
    finally:
        db_engine.dispose()
    click.echo(f"revoked {revocation.jti}")
    for schedule in revocation.paused:
        click.echo(f"paused schedule {schedule.name} (owner {schedule.created_by})")


COMMANDS = (rotate, inspect, revoke)
