"""Named secrets read from SECRETS_DIR, and masked in what a step stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import secret_store
from engine.config import Settings
from engine.errors import InvalidInput


def test_a_secret_file_loses_one_final_newline_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("abc")
    (tmp_path / "mounted").write_text("abc\n")
    (tmp_path / "windows").write_bytes(b"abc\r\n")
    (tmp_path / "two_lines").write_text("line one\nline two\n\n")
    settings = Settings(secrets_dir=tmp_path)
    values = secret_store.read(settings, ["plain", "mounted", "windows", "two_lines"])
    assert values == {
        "plain": "abc",
        "mounted": "abc",
        "windows": "abc",
        "two_lines": "line one\nline two\n",
    }


def test_a_missing_secret_is_invalid_input_naming_it_and_no_value(tmp_path: Path) -> None:
    (tmp_path / "present").write_text("value-1234")
    with pytest.raises(InvalidInput) as missing:
        secret_store.read(Settings(secrets_dir=tmp_path), ["present", "absent"])
    assert "secret 'absent' is not set" in str(missing.value)
    assert "value-1234" not in str(missing.value)
    assert missing.value.errors[0]["field"] == "secrets.absent"


def test_an_output_has_each_secret_value_replaced_by_its_placeholder_keys_included() -> None:
    output = {"echo": "Bearer s3cr3t-long", "s3cr3t-long": [1, "x s3cr3t-longer y"], "n": 5}
    masked = secret_store.mask(output, {"long": "s3cr3t-long", "longer": "s3cr3t-longer"})
    assert masked == {
        "echo": "Bearer [SECRET:long]",
        "[SECRET:long]": [1, "x [SECRET:longer] y"],
        "n": 5,
    }
    assert secret_store.mask(output, {"short": "s3c"}) is output


def test_a_replays_inputs_get_each_placeholder_replaced_by_its_secret_read_now(
    tmp_path: Path,
) -> None:
    (tmp_path / "token").write_text("t0k\\en-value\n")
    settings = Settings(secrets_dir=tmp_path)
    inputs = {
        "headers": {"Authorization": "Bearer [SECRET:token]", "X-Key": "[SECRET:token]"},
        "[SECRET:token]": ["[SECRET:token][SECRET:token]", 3, None],
        "note": "[SECRET:] and [secret:token] are text",
    }
    resolved, values = secret_store.resolve(settings, inputs, frozenset({"token", "other"}))
    assert resolved == {
        "headers": {"Authorization": "Bearer t0k\\en-value", "X-Key": "t0k\\en-value"},
        "t0k\\en-value": ["t0k\\en-valuet0k\\en-value", 3, None],
        "note": "[SECRET:] and [secret:token] are text",
    }
    assert values == {"token": "t0k\\en-value"}
    assert "[SECRET:token]" in repr(inputs)


def test_a_placeholder_the_step_does_not_read_or_that_is_missing_is_invalid_input(
    tmp_path: Path,
) -> None:
    (tmp_path / "other").write_text("value-1234")
    settings = Settings(secrets_dir=tmp_path)
    with pytest.raises(InvalidInput) as unread:
        secret_store.resolve(settings, {"a": "x [SECRET:other]"}, frozenset({"token"}))
    assert "secret 'other'" in str(unread.value) and "do not read" in str(unread.value)
    with pytest.raises(InvalidInput) as missing:
        secret_store.resolve(settings, {"a": "[SECRET:token]"}, frozenset({"token"}))
    assert "secret 'token' is not set" in str(missing.value)
    assert "value-1234" not in str(unread.value) + str(missing.value)
