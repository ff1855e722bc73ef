"""config.toml + environment -> validated settings; errors name key, value, allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.cli import main
from bot import config
from tests.conftest import ROOT


def test_repo_config_is_valid_and_equals_defaults() -> None:
    s = config.load(ROOT / "config.toml")
    d = config.Settings()
    assert config.to_dict(s) == config.to_dict(d)  # the documented file shows the defaults


def test_errors_name_key_value_and_allowed() -> None:
    with pytest.raises(config.ConfigError) as e:
        config.parse({"model": {"backend": "gpt", "max_context_tokens": 5, "foo": 1},
                      "policy": {"thresold": 0.5, "mode": "loud"},
                      "bot": {"wake_words": "assistant"},
                      "store": {"retention_days": "7"}})
    msg = str(e.value)
    assert len(e.value.errors) == 7
    assert "model.backend = 'gpt' is not allowed; allowed: 'transformers', 'openvino'" in msg
    assert "model.max_context_tokens = 5 is out of range; allowed: 64 to" in msg
    assert "unknown key model.foo" in msg
    assert "policy.thresold (did you mean 'threshold'?)" in msg
    assert "bot.wake_words = 'assistant' is not allowed: expected a list" in msg
    assert "store.retention_days = '7' is not allowed: expected an integer" in msg


def test_cross_checks_and_channel_keys() -> None:
    with pytest.raises(config.ConfigError, match="openai.model"):
        config.parse({"model": {"backend": "openai"}})
    with pytest.raises(config.ConfigError, match="platform:channel"):
        config.parse({"policy": {"channels": {"C123": {"mode": "mention"}}}})
    s = config.parse({"policy": {"channels": {"slack:C1": {"threshold": 0.9}}}})
    assert s.policy.channels["slack:C1"].threshold == 0.9


def test_broken_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\npath = 1\n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(bad)
    with pytest.raises(config.ConfigError, match="config file not found"):
        config.load(tmp_path / "missing.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[bot]\nname = "caf\xe9"\n')
    with pytest.raises(config.ConfigError, match="not UTF-8"):
        config.load(latin)


def test_secrets_only_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(config.ConfigError, match="unknown key slack.bot_token"):
        config.parse({"slack": {"bot_token": "xoxb-1"}})
    s = config.Settings()
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    with pytest.raises(config.ConfigError, match="export SLACK_BOT_TOKEN"):
        s.require_secret("SLACK_BOT_TOKEN", "the Slack adapter")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
    assert s.require_secret("SLACK_BOT_TOKEN", "the Slack adapter") == "xoxb-test"


def test_overrides_are_validated() -> None:
    s = config.overrides(config.Settings(), model={"path": "/m"}, policy={"threshold": 0.7})
    assert s.model.path == "/m" and s.policy.threshold == 0.7
    with pytest.raises(config.ConfigError):
        config.overrides(config.Settings(), policy={"threshold": 7})


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["config", "check", str(ROOT / "config.toml")]) == 0
    out = capsys.readouterr()
    assert '"threshold": 0.5' in out.out and "config ok" in out.err
    bad = tmp_path / "c.toml"
    bad.write_text('[policy]\nmode = "loud"\n[slack]\nenabled = true\n')
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "policy.mode = 'loud' is not allowed; allowed: 'mention', 'semi-active', 'always'" \
        in err
    ok = tmp_path / "ok.toml"
    ok.write_text("[slack]\nenabled = true\n")
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    monkeypatch.delenv("SLACK_APP_TOKEN", raising=False)
    assert main(["config", "check", str(ok)]) == 0
    err = capsys.readouterr().err
    assert "SLACK_BOT_TOKEN is not set" in err and "SLACK_APP_TOKEN is not set" in err
