"""`chimein run`: both adapters in one process against the fake servers, secrets, signals."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from adapters import cli
from adapters.run import plan_adapters, run_all
from bot.config import ConfigError, Settings, parse
from bot.engine.fake import ScriptedEngine
from tests.conftest import ROOT, chimein_run, sigterm
from tests.fakes import chime_on_429, marked_echo
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_slack import FakeSlack

pytestmark = pytest.mark.timeout(120)
SECRETS = ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "DISCORD_TOKEN")


@pytest.fixture(autouse=True)
def _no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECRETS:
        monkeypatch.delenv(name, raising=False)


def config(slack: FakeSlack | None, discord: FakeDiscord | None, tmp_path: Path,
           **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"store": {"path": str(tmp_path / "store.sqlite3")}}
    if slack is not None:
        data["slack"] = {"enabled": True, "api_base_url": slack.base_url}
    if discord is not None:
        data["discord"] = {"enabled": True, "api_base_url": discord.api_base_url,
                           "gateway_url": discord.gateway_url}
    data.update(extra)
    return data


def tokens(monkeypatch: pytest.MonkeyPatch, slack: FakeSlack | None,
           discord: FakeDiscord | None) -> None:
    if slack is not None:
        monkeypatch.setenv("SLACK_BOT_TOKEN", slack.bot_token)
        monkeypatch.setenv("SLACK_APP_TOKEN", slack.app_token)
    if discord is not None:
        monkeypatch.setenv("DISCORD_TOKEN", discord.token)


async def test_both_platforms_in_one_process_then_a_clean_stop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeSlack() as slack, FakeDiscord(heartbeat_ms=500) as discord:
        tokens(monkeypatch, slack, discord)
        settings = parse(config(slack, discord, tmp_path))
        stop = asyncio.Event()
        engine = ScriptedEngine(script=chime_on_429, answer=marked_echo)
        task = asyncio.create_task(run_all(settings, engine=engine, stop=stop))
        await slack.wait_connected(timeout=10)
        await discord.wait_ready(timeout=10)
        await discord.wait_for(lambda: discord.connections == 1)
        await asyncio.sleep(0)
        await slack.user_says("C0GENERAL", "U0ANN", "assistant, hello from slack")
        await discord.user_says("bob", "assistant, hello from discord")
        await slack.wait_posts(1, timeout=10)
        await discord.wait_posts(1, timeout=10)
        stop.set()
        assert await asyncio.wait_for(task, 15) == 0
        assert [p["text"] for p in slack.posts] == ["echo: assistant, hello from slack"]
        assert [p["content"] for p in discord.posts] == ["echo: assistant, hello from discord"]
        await slack.wait_for(lambda: not slack._sockets)  # both connections closed
        await discord.wait_for(lambda: discord._ws is None or discord._ws.closed)


async def test_sigterm_stops_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process-directed SIGTERM, as systemd or `docker stop` send it, to a bot process of
    its own (run_all with the scripted engine): run_all's handler turns it into a stop."""
    import json

    async with FakeSlack() as slack:
        tokens(monkeypatch, slack, None)
        cfg = json.dumps(config(slack, None, tmp_path))
        code = ("import asyncio, json, sys; from adapters.run import run_all; "
                "from bot.config import parse; from bot.engine.fake import ScriptedEngine; "
                f"sys.exit(asyncio.run(run_all(parse(json.loads({cfg!r})), "
                "engine=ScriptedEngine())))")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        await slack.wait_connected(timeout=30)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert b"SIGTERM: shutting down" in err
        await slack.wait_for(lambda: not slack._sockets)


@pytest.mark.parametrize(("section", "mode", "missing"), [
    ("slack", "socket", "SLACK_BOT_TOKEN"),
    ("slack", "socket", "SLACK_APP_TOKEN"),
    ("slack", "http", "SLACK_SIGNING_SECRET"),
    ("discord", None, "DISCORD_TOKEN"),
])
def test_a_missing_secret_names_the_variable(monkeypatch: pytest.MonkeyPatch, section: str,
                                             mode: str | None, missing: str) -> None:
    for name in SECRETS:
        if name != missing:
            monkeypatch.setenv(name, "x")
    table: dict[str, Any] = {"enabled": True}
    if mode:
        table["mode"] = mode
    with pytest.raises(ConfigError) as err:
        plan_adapters(parse({section: table}))
    assert f"export {missing}=" in str(err.value)


def test_cli_run_reports_the_missing_token(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("[discord]\nenabled = true\n", encoding="utf-8")
    assert cli.main(["--config", str(cfg), "run"]) == 2
    err = capsys.readouterr().err
    assert "DISCORD_TOKEN" in err and "export DISCORD_TOKEN=" in err


async def test_nothing_enabled_says_what_to_enable(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_all(Settings(), engine=ScriptedEngine()) == 2
    assert "[slack] enabled = true" in capsys.readouterr().err


async def test_a_refused_intent_stops_with_the_portal_switch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    async with FakeSlack() as slack, FakeDiscord(refuse_intents=True) as discord:
        tokens(monkeypatch, slack, discord)
        settings = parse(config(slack, discord, tmp_path))
        rc = await asyncio.wait_for(run_all(settings, engine=ScriptedEngine()), 20)
    assert rc == 2
    assert "Message Content Intent" in capsys.readouterr().err
    assert not slack._sockets  # the adapter that did start was closed again


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["transformers", "openvino"])
async def test_chimein_run_subprocess_answers_and_exits_on_sigterm(
        tmp_path: Path, tiny_model_dir: Path, backend: str) -> None:
    """The real command line with a real (tiny) model: connect, answer, SIGTERM, exit 0. The
    OpenVINO run serves an IR exported as `chimein export --openvino` writes it (its inference
    requests live on the bot's worker thread when the stop arrives)."""
    model = tiny_model_dir
    if backend == "openvino":
        from training.export import to_openvino

        model = to_openvino(tiny_model_dir, tmp_path / "ir", "fp32")
    async with FakeSlack() as slack:
        cfg = tmp_path / "config.toml"
        cfg.write_text(
            f'[model]\npath = "{model}"\nbackend = "{backend}"\ndevice = "cpu"\n'
            f'[generation]\nmax_new_tokens = 8\nseed = 0\n'
            f'[store]\npath = "{tmp_path / "store.sqlite3"}"\n'
            f'[slack]\nenabled = true\napi_base_url = "{slack.base_url}"\n', encoding="utf-8")
        secrets = {"SLACK_BOT_TOKEN": slack.bot_token, "SLACK_APP_TOKEN": slack.app_token}
        async with chimein_run(cfg, secrets, "-v") as proc:
            await slack.wait_connected(timeout=90)
            await slack.user_says("C0GENERAL", "U0ANN", "assistant, what is 429?")
            posts = await slack.wait_posts(1, timeout=60)
            assert posts[0]["text"].strip() and "(response)" not in posts[0]["text"]
            log = await sigterm(proc)
        assert proc.returncode == 0, log
        assert "SIGTERM: shutting down" in log and "stopped" in log
        assert "Traceback" not in log


async def test_an_unreachable_platform_is_one_line_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-x")
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-x")
    settings = parse({"store": {"path": str(tmp_path / "s.sqlite3")},
                      "slack": {"enabled": True, "api_base_url": f"http://127.0.0.1:{port}/"}})
    assert await asyncio.wait_for(run_all(settings, engine=ScriptedEngine()), 60) == 2
    err = capsys.readouterr().err
    assert "error: the slack adapter could not connect: " in err
    assert "Traceback" not in err and "slack.api_base_url" in err
