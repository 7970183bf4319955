"""What a failure may not carry: a step's error message and traceback are stored (the step,
the run, the dead letter) and shown (the API, Flower, the logs) to people other than the
run's owner. Before any of that, they lose every credential engine.logs knows of (bearer
tokens, JWTs, the signing secrets) and every value the run holds under a name that says it
is secret (`password`, `api_key`, `client_secret`, `token`, ...), wherever the action put
it: in its message, or in a library's exception quoting a URL or a request; and the value of
every named secret the step read (`{{ secrets.name }}`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from engine.config import Settings
from engine.logs import REDACTED, Redactor

# A key whose value is a secret: password, passwd, passphrase, secret, token, api_key,
# apikey, access_key, private_key, authorization, credential(s), cookie.
SECRET_NAME = re.compile(
    r"(?i)pass(word|wd|phrase)|secret|token|api[-_]?key|access[-_]?key|private[-_]?key"
    r"|authori[sz]ation|credential|cookie"
)
# Shorter values are not looked for: they would hide unrelated text.
MIN_VALUE_LENGTH = 4


def secret_values(document: Any, named: bool = False) -> Iterator[str]:
    """The strings held under a key named like a secret, at any depth of `document`."""
    if isinstance(document, dict):
        for key, value in document.items():
            yield from secret_values(value, named or bool(SECRET_NAME.search(str(key))))
    elif isinstance(document, list | tuple):
        for item in document:
            yield from secret_values(item, named)
    elif named and isinstance(document, str):
        yield document


def failure_redactor(settings: Settings, *documents: Any, secrets: Iterable[str] = ()) -> Redactor:
    """A Redactor for a failure of a step that saw `documents` (params, inputs, outputs)
    and the values of the named `secrets` it read (engine.secret_store)."""
    named = {value for document in documents for value in secret_values(document)}
    return Redactor(
        (settings.jwt_secret, *settings.jwt_previous_secrets, *named, *secrets),
        min_length=MIN_VALUE_LENGTH,
    )


def masked(document: Any, named: bool = False) -> Any:
    """A copy of `document` whose values under a key named like a secret are REDACTED: what
    a record of a change (the audit trail, a dead letter's resolution) keeps of inputs."""
    if isinstance(document, dict):
        return {
            key: masked(value, named or bool(SECRET_NAME.search(str(key))))
            for key, value in document.items()
        }
    if isinstance(document, list | tuple):
        return [masked(item, named) for item in document]
    return REDACTED if named and document is not None else document
