"""A workflow spec's text: YAML or JSON (JSON is YAML), parsed into what a spec may hold
(what JSON can), a key repeated in one mapping refused in either."""

from __future__ import annotations

import json
import math
from collections.abc import Hashable
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from engine import payloads
from engine.errors import InvalidInput, InvalidSpec


class _SpecLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key repeated in one mapping: PyYAML keeps the last
    one silently, and a spec's second `with:` or `needs:` would drop the first unseen. Keys
    a merge (`<<: *base`) brings in may be overridden, as YAML means them to be."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, Hashable) and key in seen:
                    raise ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return mapping


def refuse_duplicate_keys(text: str | bytes) -> None:
    """Refuse a JSON spec (already parsed once) whose objects repeat a key, as parse_text
    refuses one in YAML: JSON parsers keep the last one silently."""
    try:
        json.loads(text, object_pairs_hook=_unique_pairs)
    except _DuplicateKey as exc:
        message = f"the key {exc.args[0]!r} appears twice in one object"
        raise InvalidSpec(
            f"the spec is ambiguous: {message}", errors=[{"field": "body", "message": message}]
        ) from None


def parse_text(text: str | bytes) -> Any:
    """Parse a spec written as YAML or JSON (JSON is YAML). What YAML has and JSON has not
    (dates, binary, sets, NaN) is refused: a spec is stored and served as JSON; so is a key
    repeated in one mapping."""
    try:
        value = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        raise InvalidInput(
            f"the spec is not valid YAML or JSON: {exc}",
            errors=[{"field": "body", "message": str(exc).replace("\n", " ")}],
        ) from exc
    except RecursionError:
        raise payloads.too_deep_to_parse() from None
    payloads.check(value, error=InvalidSpec)  # before anything follows its aliases
    try:
        value = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidSpec(
            "the spec holds a value JSON cannot: quote it to make it a string",
            errors=[{"field": _not_json_at(value), "message": str(exc)}],
        ) from None
    problem = payloads.unstorable_within(value)
    if problem:
        raise InvalidSpec(f"the spec {problem}", errors=[{"field": "body", "message": problem}])
    return value


def _not_json_at(value: Any) -> str:
    """Where the first value JSON cannot hold is in a parsed spec (a YAML date, binary, set,
    NaN or a key that is not a string), as `steps[0].with.v`; "body" if it is the whole.
    The spec is already within engine.payloads' limits."""
    pending: list[tuple[Any, str]] = [(value, "")]
    while pending:
        item, where = pending.pop()
        if isinstance(item, dict):
            for key, member in item.items():
                if not _json_scalar(key):
                    return where or "body"
                pending.append((member, f"{where}.{key}" if where else str(key)))
        elif isinstance(item, list):
            pending.extend((member, f"{where}[{index}]") for index, member in enumerate(item))
        elif not _json_scalar(item):
            return where or "body"
    return "body"


def _json_scalar(item: Any) -> bool:
    if isinstance(item, float):
        return math.isfinite(item)
    return item is None or isinstance(item, str | int)
