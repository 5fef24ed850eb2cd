import pytest

from gateway.settings import Settings, SettingsError


def test_defaults() -> None:
    s = Settings.load()
    assert (s.heartbeat_interval, s.heartbeat_timeout) == (30.0, 5.0)
    assert (s.heartbeat_warn_after, s.heartbeat_max_missed, s.typing_timeout) == (2, 5, 5.0)


def test_environment_wins_over_the_file(tmp_path, monkeypatch) -> None:
    config = tmp_path / "hypercorn.toml"
    config.write_text('bind = ["127.0.0.1:1"]\n[wshub]\ntyping_timeout = 2\nstats_interval = 9\n')
    monkeypatch.setenv("WSHUB_TYPING_TIMEOUT", "3")
    s = Settings.load(config)
    assert (s.typing_timeout, s.stats_interval) == (3.0, 9.0)


def test_bad_value_names_the_setting(monkeypatch) -> None:
    monkeypatch.setenv("WSHUB_HEARTBEAT_INTERVAL", "-1")
    with pytest.raises(SettingsError, match="WSHUB_HEARTBEAT_INTERVAL") as caught:
        Settings.load()
    assert "\n" not in str(caught.value)


def test_unknown_key_in_the_table_is_refused(tmp_path) -> None:
    config = tmp_path / "hypercorn.toml"
    config.write_text("[wshub]\nheartbeat_intervall = 3\n")
    with pytest.raises(SettingsError, match="heartbeat_intervall"):
        Settings.load(config)


def test_relations_are_checked() -> None:
    with pytest.raises(SettingsError, match="heartbeat_timeout"):
        Settings.load(heartbeat_interval=2, heartbeat_timeout=3)
