"""`engine dlq` — list, show, replay (one or by filter) and discard dead letters.

The CLI acts as `cli:<user>` (cli.context.operator()); every change is audited under it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from cli.context import emit, json_option, operator, sender, session, settings
from engine import bulk_discard, bulk_replay, dlq_query, replay
from engine.db import make_engine, make_session_factory

FILTER_OPTIONS = (
    ("--workflow", "--filter-workflow", "workflow"),
    ("--step", "--filter-step", "step"),
    ("--exception-type", "--filter-exception-type", "exception_type"),
    ("--fingerprint", "--filter-fingerprint", "fingerprint"),
    ("--run", "--filter-run", "run_id"),
    ("--since", "--filter-since", "since"),
    ("--until", "--filter-until", "until"),
)


def filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The filter of GET /admin/dlq as options (times in ISO 8601)."""
    for *names, dest in reversed(FILTER_OPTIONS):
        command = click.option(*names, dest, default=None)(command)
    return command


def reason_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--reason",
        default=None,
        help="Why (recorded in the audit trail). Required, except for a --dry-run.",
    )(command)


def bulk_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--all with the filter, --dry-run and --confirm-count: the bulk form of a command."""
    command = click.option(
        "--confirm-count", type=int, default=None, help="With --all: the dry run's count."
    )(command)
    command = click.option(
        "--dry-run", is_flag=True, help="With --all: only count and list the ids."
    )(command)
    command = filter_options(command)
    return click.option(
        "--all", "bulk", is_flag=True, help="Every open letter matching the filter."
    )(command)


def _one_or_all(letter_id: str | None, bulk: bool) -> None:
    if letter_id and bulk:
        raise click.UsageError("give a LETTER_ID or --all, not both")
    if not letter_id and not bulk:
        raise click.UsageError("give a LETTER_ID or --all")


def _check_bulk(dry_run: bool, confirm_count: int | None, reason: str | None) -> None:
    if not dry_run and confirm_count is None:
        raise click.UsageError("--all needs --dry-run first, then --confirm-count N --reason R")
    if not dry_run:
        _require_reason(reason)


def _list_matching(ids: list[str]) -> None:
    for letter_id in ids:
        click.echo(letter_id)
    click.echo(f"{len(ids)} open dead letter(s) match; confirm with --confirm-count")


def _filter(options: dict[str, Any]) -> dlq_query.LetterFilter:
    return dlq_query.LetterFilter.parse(
        {name: options.get(name) for name in dlq_query.FILTER_FIELDS}, prefix="--"
    )


@click.group("dlq")
def dlq() -> None:
    """The dead-letter queue: inspect, replay, discard."""


@dlq.command("ls")
@click.option("--status", type=click.Choice(dlq_query.STATUSES), default=None, help="All if unset.")
@filter_options
@click.option("--limit", type=click.IntRange(1, 1000), default=50)
@click.option("--cursor", default=None, help="Continue after a page (its next_cursor).")
@click.option("--json", "as_json", is_flag=True, help="The API's JSON page (GET /admin/dlq).")
def dlq_ls(limit: int, cursor: str | None, as_json: bool, **options: Any) -> None:
    """List dead letters, newest first, then their counts by fingerprint."""
    with session() as current:
        where = _filter(options)
        items, following = dlq_query.list_letters(current, where, limit=limit, cursor=cursor)
        groups = dlq_query.group_letters(current, where)
        if as_json:
            from web import serialize

            carriers = dlq_query.carriers(current, items)
            emit(
                serialize.dead_letter_page(
                    items, following, groups, settings().flower_url, carriers
                )
            )
            return
        for letter in items:
            click.echo(
                f"{letter.id}  {letter.status:<9} {letter.failed_at:%Y-%m-%d %H:%M:%S}  "
                f"{letter.workflow}/{letter.step_id or '(planning)'}  x{letter.attempts}  "
                f"{letter.exception_type}  {letter.fingerprint}  run {letter.run_id}"
            )
        if following:
            click.echo(f"... more; narrow the filter or raise --limit (now {limit})")
        click.echo(f"groups by fingerprint ({len(groups)}):")
        for group in groups:
            click.echo(
                f"  {group.fingerprint}  {group.count:>6}  {group.exception_type}  "
                f"last {group.last_failed_at:%Y-%m-%d %H:%M:%S}"
            )


@dlq.command("show")
@click.argument("letter_id")
def dlq_show(letter_id: str) -> None:
    """Show a dead letter as JSON (with its traceback and Flower link)."""
    from web import serialize

    with session() as current:
        letter = dlq_query.get_letter(current, letter_id)
        carrier = dlq_query.carriers(current, [letter]).get(letter.id)
        emit(serialize.dead_letter(letter, settings().flower_url, carrier))


@dlq.command("replay")
@click.argument("letter_id", required=False)
@reason_option
@click.option(
    "--inputs",
    default=None,
    help="JSON object replacing the step's inputs; a [SECRET:name] in it sends that secret.",
)
@bulk_options
def dlq_replay(
    letter_id: str | None,
    reason: str | None,
    inputs: str | None,
    bulk: bool,
    dry_run: bool,
    confirm_count: int | None,
    **options: Any,
) -> None:
    """Replay LETTER_ID into its run, or with --all every open letter matching a filter
    (first --dry-run, then --confirm-count N --reason R)."""
    _one_or_all(letter_id, bulk)
    if bulk:
        if inputs is not None:
            raise click.UsageError("--inputs replaces one letter's inputs; it cannot go with --all")
        _replay_all(options, reason, dry_run, confirm_count)
        return
    _require_reason(reason)
    replacement = None
    if inputs is not None:
        replacement = json_option(inputs, "--inputs")
        if not isinstance(replacement, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--inputs")
    with session() as current:
        replayed = replay.replay(
            current, settings(), letter_id or "", operator(), reason, replacement
        )
    with sender() as send:
        send(replayed.work)
    waits = f"; it waits for a slot ({replayed.waiting})" if replayed.waiting else ""
    click.echo(f"replayed {letter_id} into run {replayed.run_id}{waits}")


def _require_reason(reason: str | None) -> None:
    """Checked before anything is read, as the engine would refuse it after."""
    if not (reason or "").strip():
        raise click.MissingParameter(param_hint="'--reason'", param_type="option")


def _replay_all(
    options: dict[str, Any], reason: str | None, dry_run: bool, confirm_count: int | None
) -> None:
    _check_bulk(dry_run, confirm_count, reason)
    with session() as current:
        where = _filter(options)
        plan = bulk_replay.plan_bulk(
            current,
            settings(),
            where,
            operator(),
            confirm_count=None if dry_run else confirm_count,
            reason=reason,
        )
    if dry_run:
        _list_matching(plan.ids)
        return
    db_engine = make_engine(settings())
    pacer = bulk_replay.Pacer(settings().bulk_replay_rate)
    outcomes: dict[str, int] = {}
    waiting = 0
    try:
        with sender() as send:
            for batch in bulk_replay.replay_batches(
                make_session_factory(db_engine), settings(), plan, operator(), reason or ""
            ):
                for item in batch:
                    if item.work:
                        time.sleep(pacer.delay())
                        send(item.work)
                    outcomes[item.outcome] = outcomes.get(item.outcome, 0) + 1
                    line = f"{item.id}  {item.outcome}  {item.detail or item.run_id or ''}"
                    if item.waiting:  # its run waits for a slot of its workflow's limit
                        waiting += 1
                        line += f"  waiting ({item.waiting})"
                    click.echo(line)
    finally:
        db_engine.dispose()
    summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
    if waiting:
        summary += f"; {waiting} run(s) waiting for a slot"
    click.echo(f"{len(plan.ids)} dead letter(s): {summary or 'none'}")


@dlq.command("discard")
@click.argument("letter_id", required=False)
@reason_option
@bulk_options
def dlq_discard(
    letter_id: str | None,
    reason: str | None,
    bulk: bool,
    dry_run: bool,
    confirm_count: int | None,
    **options: Any,
) -> None:
    """Discard an open dead letter (kept for audit, no longer open), or with --all every
    open letter matching a filter (first --dry-run, then --confirm-count N --reason R)."""
    _one_or_all(letter_id, bulk)
    if not bulk:
        _require_reason(reason)
        with session() as current:
            _, work = replay.discard(current, letter_id or "", operator(), reason)
        work.count_committed()
        click.echo(f"discarded {letter_id}")
        return
    _check_bulk(dry_run, confirm_count, reason)
    with session() as current:
        where = _filter(options)
        if dry_run:
            _list_matching(bulk_discard.dry_run(current, settings(), where, operator()).ids)
            return
        done = bulk_discard.discard_matching(
            current,
            settings(),
            where,
            operator(),
            confirm_count=confirm_count or 0,
            reason=reason,
        )
    done.work.count_committed()
    for found in done.discarded:
        click.echo(f"{found}  discarded")
    for found in done.not_open:
        click.echo(f"{found}  not_open")
    click.echo(f"{len(done.discarded)} dead letter(s) discarded")
