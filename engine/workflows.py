"""Registered workflows: register a spec as a new version, look versions up, and the compiled
form of each version, cached per process (registered versions never change). What a spec is
and how it compiles is engine.specs."""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine import cursors
from engine.config import Settings
from engine.errors import Conflict, InvalidInput, NotFound
from engine.models import Workflow
from engine.spec_text import parse_text
from engine.specs import CompiledWorkflow, compile_spec, spec_hash

log = logging.getLogger(__name__)


def register(session: Session, spec: Any, settings: Settings) -> tuple[Workflow, bool]:
    """Register a workflow version; the same spec again is a no-op, another spec a 409."""
    compile_spec(spec, settings)
    digest = spec_hash(spec)
    key = (spec["name"], spec["version"])
    existing = session.get(Workflow, key)
    if existing is None:
        workflow = Workflow(name=key[0], version=key[1], spec=spec, spec_hash=digest)
        try:
            with session.begin_nested():
                session.add(workflow)
            return workflow, True
        except IntegrityError:
            # A concurrent request registered this version first: answer as a repeat would.
            existing = session.get(Workflow, key)
            if existing is None:
                raise
    if existing.spec_hash == digest:
        return existing, False
    raise Conflict(
        f"workflow {key[0]!r} version {key[1]} is already registered with "
        "another spec; versions are immutable, register a new version"
    )


def get(session: Session, name: str, version: int | None = None) -> Workflow:
    """A workflow version, or the latest one when `version` is None."""
    query = select(Workflow).where(Workflow.name == name)
    if version is not None:
        query = query.where(Workflow.version == version)
    workflow = session.scalars(query.order_by(Workflow.version.desc()).limit(1)).first()
    if workflow is None:
        suffix = f" version {version}" if version is not None else ""
        raise NotFound(f"workflow {name!r}{suffix} does not exist")
    return workflow


def list_latest(session: Session) -> list[Workflow]:
    """The latest version of every workflow, by name."""
    return list_latest_page(session)[0]


def list_latest_page(
    session: Session, *, limit: int | None = None, cursor: str | None = None
) -> tuple[list[Workflow], str | None]:
    """The latest version of each workflow, by name, `limit` at a time (all with None), from
    where `cursor` left off; and the cursor of the next page, None after the last."""
    latest = select(Workflow.name, func.max(Workflow.version).label("version"))
    if cursor:
        (after,) = cursors.decode(cursor, 1)
        latest = latest.where(Workflow.name > str(after))
    found = latest.group_by(Workflow.name).subquery()
    query = (
        select(Workflow)
        .join(found, (Workflow.name == found.c.name) & (Workflow.version == found.c.version))
        .order_by(Workflow.name)
    )
    if limit is None:
        return list(session.scalars(query)), None
    rows = list(session.scalars(query.limit(limit + 1)))
    following = cursors.encode(rows[limit - 1].name) if len(rows) > limit else None
    return rows[:limit], following


def list_versions(session: Session, name: str) -> list[Workflow]:
    rows = list(
        session.scalars(select(Workflow).where(Workflow.name == name).order_by(Workflow.version))
    )
    if not rows:
        raise NotFound(f"workflow {name!r} does not exist")
    return rows


_COMPILED: dict[tuple[str, str, int], CompiledWorkflow] = {}
# The database URL of each engine, rendered once: rendering it cost more than the lookup.
_DATABASES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _database(session: Session) -> str:
    bind = session.get_bind()
    try:
        return _DATABASES[bind]
    except KeyError:
        # A session bound to a connection (engine.db.lock_wait) names its engine's database.
        found = _DATABASES[bind] = str(bind.engine.url)
        return found


def compiled(session: Session, settings: Settings, name: str, version: int) -> CompiledWorkflow:
    """The compiled workflow, cached per database: registered versions never change."""
    key = (_database(session), name, version)
    found = _COMPILED.get(key)
    if found is None:
        spec = get(session, name, version).spec
        found = _COMPILED[key] = compile_spec(spec, settings, registering=False)
    return found


_WORKFLOWS = Workflow.__table__
# On the table, not the model: an ORM-enabled select cost twice as much per submit.
_LATEST_VERSION = select(func.max(_WORKFLOWS.c.version)).where(
    _WORKFLOWS.c.name == bindparam("b_name", type_=_WORKFLOWS.c.name.type)
)


# The latest version of each workflow as this process last read it, per database. Only a
# guard in the same statement makes it safe to use: see latest_version_is.
_LATEST: dict[tuple[str, str], int] = {}


def compiled_for_submit(
    session: Session,
    settings: Settings,
    name: str,
    version: int | None = None,
    *,
    remembered: bool = False,
) -> CompiledWorkflow:
    """The compiled form of a version (the latest when `version` is None), NotFound when it
    does not exist. A cached version needs no read; the latest costs one indexed read, or
    none with `remembered`: then it is the latest this process last read, which the caller
    must check where it writes (latest_version_is)."""
    if version is None:
        key = (_database(session), name)
        version = _LATEST.get(key) if remembered else None
        if version is None:
            version = session.execute(_LATEST_VERSION, {"b_name": name}).scalar()
            if version is None:
                raise NotFound(f"workflow {name!r} does not exist")
            _LATEST[key] = version
    return compiled(session, settings, name, version)


def latest_version_is(name: Any, version: Any) -> ColumnElement[bool]:
    """A condition, true while `version` is the latest registered version of `name` (the
    arguments are SQL expressions, such as bound parameters)."""
    return (
        select(func.max(_WORKFLOWS.c.version)).where(_WORKFLOWS.c.name == name).scalar_subquery()
        == version
    )


def plan_stages(
    session: Session, settings: Settings, name: str, params: Any, version: int | None = None
) -> tuple[list[list[str]], dict[str, str]]:
    """The dry-run plan: stages of steps that can run in parallel, and the `when` of each step
    that has one (it runs only if that holds). Writes nothing."""
    workflow = get(session, name, version)
    compiled_workflow = compiled(session, settings, workflow.name, workflow.version)
    compiled_workflow.check_params(params)
    return compiled_workflow.stages(), compiled_workflow.conditions()


def register_directory(session: Session, settings: Settings) -> list[str]:
    """Register the built-in specs under settings.workflows_dir; returns what was added."""
    added: list[str] = []
    directory = Path(settings.workflows_dir)
    if not directory.is_dir():
        return added
    for path in sorted(directory.glob("*.y*ml")) + sorted(directory.glob("*.json")):
        try:
            workflow, created = register(session, parse_text(path.read_text()), settings)
        except (InvalidInput, Conflict) as exc:
            log.error("workflow file %s not registered: %s %s", path, exc.detail, exc.errors)
            continue
        if created:
            added.append(f"{workflow.name}@{workflow.version}")
    return added
