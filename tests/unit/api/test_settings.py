"""The server API's settings: keys from the environment, refused without echoing a key."""

from __future__ import annotations

import pytest

from gateway.settings import Settings, SettingsError


def test_keys_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("WSHUB_API_KEYS", " first-key-0123456789 ,second-key-0123456789,")
    keys = [key.get_secret_value() for key in Settings.load().api_keys]
    assert keys == ["first-key-0123456789", "second-key-0123456789"]


def test_off_by_default() -> None:
    settings = Settings.load()
    assert settings.api_keys == [] and settings.api_public is False


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("good-key-0123456789,short-secret", "key 2 has 12 characters; at least 16 are needed"),
        (["with space 0123456789"], "key 1 must be printable ASCII without spaces or commas"),
    ],
)
def test_a_bad_key_is_named_by_position_never_shown(keys: object, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.load(api_keys=keys)
    text = str(caught.value)
    assert text == f"invalid settings: api_keys: {message}"
    assert "short-secret" not in text and "with space" not in text
