"""Named secrets: what `{{ secrets.name }}` in a step's `with` reads.

A secret is a file in SECRETS_DIR (Settings.secrets_dir) named after it, holding its value
(one final newline dropped): what Docker's and Kubernetes' secret mounts look like. Only a
worker reads one, when a step whose templates name it renders its inputs, and it reads the
file each time (a few microseconds, for those steps only): a rotated file counts from the
next step on, with no restart and no cache to go stale.

A value lives in the worker's memory for the action's call alone. What is stored of the step
holds its placeholder instead (`[SECRET:name]`): its inputs are rendered a second time with
placeholders for the record, and its output, should the action echo a value, is masked.
Inputs a replay replaces (engine.replay_inputs) keep the placeholders as they are given, and
the worker puts each secret in place of its placeholder as the step runs (`resolve`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from engine.config import Settings
from engine.errors import InvalidInput

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$(?!\n)")
# Larger files are not secrets but mistakes (a key ring, a directory listing).
MAX_BYTES = 65_536
# A placeholder as stored inputs show one, alone or inside a longer string ("Bearer
# [SECRET:token]"). Any name is taken, so that a mistyped one is refused by name rather than
# sent as text.
PLACEHOLDER = re.compile(r"\[SECRET:([^\[\]]+)\]")
# Shorter values are not masked in outputs and failures: they would hide unrelated text
# (engine.redaction masks failures from this length on as well).
MIN_MASKED_LENGTH = 4


def placeholder(name: str) -> str:
    """What stored inputs and outputs show in place of the secret `name`."""
    return f"[SECRET:{name}]"


def placeholders(names: Iterable[str]) -> dict[str, str]:
    return {name: placeholder(name) for name in names}


def _missing(settings: Settings, name: str, why: str) -> InvalidInput:
    message = f"secret {name!r} {why} (SECRETS_DIR is {settings.secrets_dir})"
    return InvalidInput(message, errors=[{"field": f"secrets.{name}", "message": message}])


def read(settings: Settings, names: Iterable[str]) -> dict[str, str]:
    """The values of the secrets `names`, read from SECRETS_DIR now. A secret that is not
    there (or not readable as text) is InvalidInput naming it: the step fails at once, and a
    replay once the operator has provided it runs it again."""
    values: dict[str, str] = {}
    for name in names:
        if not NAME.match(name):
            raise _missing(settings, name, "is not a valid secret name")
        path = settings.secrets_dir / name
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_BYTES + 1)
        except FileNotFoundError:
            raise _missing(settings, name, "is not set: no file of that name") from None
        except OSError as exc:
            raise _missing(settings, name, f"cannot be read: {exc.strerror}") from None
        if len(raw) > MAX_BYTES:
            raise _missing(settings, name, f"is larger than {MAX_BYTES} bytes")
        try:
            value = raw.decode()
        except UnicodeDecodeError:
            raise _missing(settings, name, "is not UTF-8 text") from None
        values[name] = value.removesuffix("\n").removesuffix("\r")
    return values


def referenced(document: Any) -> set[str]:
    """The names of the secrets whose placeholders `document`'s strings hold, keys included."""
    found: set[str] = set()

    def collect(text: str) -> str:
        found.update(PLACEHOLDER.findall(text))
        return text

    _strings(document, collect)
    return found


def resolve(
    settings: Settings, document: Any, readable: Iterable[str]
) -> tuple[Any, dict[str, str]]:
    """`document` (a replay's inputs) with each placeholder replaced by its secret's value,
    read now, and those values by name. A placeholder of a secret not among `readable` (those
    the step's templates read) or not in SECRETS_DIR is InvalidInput naming it, as a missing
    secret of a template is: never sent as text."""
    names = referenced(document)
    if not names:
        return document, {}
    unread = sorted(names - set(readable))
    if unread:
        message = (
            f"the inputs name secret {unread[0]!r}, which this step's templates do not read: "
            "a replay's inputs may name only those"
        )
        raise InvalidInput(message, errors=[{"field": f"secrets.{unread[0]}", "message": message}])
    values = read(settings, sorted(names))

    def put(text: str) -> str:
        return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)

    return _strings(document, put), values


def mask(document: Any, values: Mapping[str, str]) -> Any:
    """`document` (an action's output) with each secret value found in its strings, keys
    included, replaced by the secret's placeholder (walked only for steps that read one)."""
    found = {
        value: placeholder(name)
        for name, value in values.items()
        if len(value) >= MIN_MASKED_LENGTH
    }
    if not found:
        return document
    # Longest first: a value holding another is replaced whole.
    pattern = re.compile("|".join(re.escape(v) for v in sorted(found, key=len, reverse=True)))
    return _strings(document, lambda text: pattern.sub(lambda match: found[match.group(0)], text))


def _strings(document: Any, change: Callable[[str], str]) -> Any:
    """A copy of `document` with `change` applied to each of its strings, keys included."""
    if isinstance(document, str):
        return change(document)
    if isinstance(document, dict):
        return {_strings(key, change): _strings(item, change) for key, item in document.items()}
    if isinstance(document, list | tuple):
        return [_strings(item, change) for item in document]
    return document
