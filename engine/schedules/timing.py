"""Cron arithmetic (croniter) in a schedule's own timezone (zoneinfo). Times go in and come
out timezone-aware; a cron expression's wall-clock times are read in the schedule's zone,
so a daily 02:30 stays at 02:30 local across a DST change (croniter moves a time that a
spring-forward skips to the first one after the gap). A wall-clock time that a fall-back
repeats fires once, at its first occurrence, when the expression names its hours; one
whose hour field is a wildcard (`*`, `*/2`, @hourly) fires in both, as cron does."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from engine.errors import InvalidInput

# Counting the fires missed while nothing ticked stops here (a minutely schedule missed for
# weeks would otherwise cost a loop of tens of thousands); the log says "at least".
MAX_COUNTED = 10_000
_TINY = timedelta(microseconds=1)


def zone(name: str) -> ZoneInfo:
    """The IANA timezone `name`; InvalidInput naming the field `timezone` when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise InvalidInput(
            f"unknown timezone {name!r}",
            errors=[{"field": "timezone", "message": "an IANA name such as Europe/Berlin or UTC"}],
        ) from exc


def check_cron(expression: str) -> None:
    """InvalidInput naming the field `cron` unless croniter can read `expression`."""
    # Five fields or a macro (@daily): croniter also reads a seconds field, which a tick
    # every few seconds could not honour.
    fields = expression.split() if isinstance(expression, str) else []
    valid = len(fields) == 5 or (len(fields) == 1 and fields[0].startswith("@"))
    try:
        valid = valid and croniter.is_valid(expression)
    except Exception:  # croniter raises more than its own errors on some garbage
        valid = False
    if not valid:
        raise InvalidInput(
            f"invalid cron expression {expression!r}",
            errors=[
                {
                    "field": "cron",
                    "message": "five fields: minute hour day-of-month month day-of-week "
                    "(e.g. '*/15 * * * *'), or a macro such as @daily",
                }
            ],
        )


def next_after(expression: str, timezone: str, moment: datetime) -> datetime:
    """The first fire time strictly after `moment`, in UTC."""
    local = moment.astimezone(ZoneInfo(timezone))
    try:
        found = croniter(expression, local).get_next(datetime)
    except (CroniterBadCronError, CroniterBadDateError) as exc:
        raise InvalidInput(
            f"cron expression {expression!r} names no time after {moment.isoformat()}",
            errors=[{"field": "cron", "message": "names no future time"}],
        ) from exc
    if found.fold == 1 and _names_its_hours(expression):
        # The second occurrence of a wall-clock time a fall-back repeats: its first one
        # (fold 0, an hour earlier) was this schedule's fire, or passed before it existed.
        if found.replace(fold=0).astimezone(UTC) <= moment:
            return next_after(expression, timezone, found.astimezone(UTC))
    return found.astimezone(UTC)


def between(
    expression: str, timezone: str, since: datetime, until: datetime, limit: int
) -> list[datetime]:
    """The fire times from `since` (included) to `until` (excluded), in UTC and in order, at
    most `limit` of them: the same times a tick going from one fire to the next names."""
    found: list[datetime] = []
    moment = next_after(expression, timezone, since - _TINY)
    while moment < until and len(found) < limit:
        found.append(moment)
        moment = next_after(expression, timezone, moment)
    return found


def _names_its_hours(expression: str) -> bool:
    """Whether the hour field fires at hours it names, not at every hour (cron runs such a
    job once in a repeated hour, and a wildcard one in both)."""
    fields = expression.split()
    if len(fields) == 1:
        return fields[0] != "@hourly"
    return "*" not in fields[1]


@dataclass(frozen=True)
class Due:
    """What a schedule whose next fire time has passed should do at `now`."""

    fire_at: datetime  # the latest fire time at or before now: the one run to submit
    skipped: int  # older fire times missed since then, not submitted
    next_fire_at: datetime  # the first fire time after now


def due(expression: str, timezone: str, next_fire_at: datetime, now: datetime) -> Due:
    """For a schedule due at `next_fire_at` (<= now): the latest fire time up to `now`, how
    many earlier ones were missed (from next_fire_at on, counted up to MAX_COUNTED), and
    the next fire time after now."""
    tz = ZoneInfo(timezone)
    latest = croniter(expression, (now + _TINY).astimezone(tz)).get_prev(datetime).astimezone(UTC)
    latest = max(latest, next_fire_at)
    skipped = 0
    walker = croniter(expression, (next_fire_at - _TINY).astimezone(tz))
    while skipped < MAX_COUNTED:
        moment = walker.get_next(datetime).astimezone(UTC)
        if moment >= latest:
            break
        skipped += 1
    return Due(latest, skipped, next_after(expression, timezone, now))
