"""Model registry: versions, the atomic active pointer, the promotion gate, retrain, and the bot
following the registry (a new active version swaps in under a running core)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from adapters.cli import main as chimein
from adapters.registry_watch import RegistryWatcher
from bot import config
from bot.core import Core, DecisionRecord
from bot.engine import load_engine
from bot.engine.base import EngineError
from bot.message import ConversationKey, Message
from bot.policy import Policy
from bot.registry import read_active
from training import registry as reg

GOOD = {"balanced_accuracy": 0.80, "missed_address_rate": 0.10}


def make_registry(tmp_path: Path, tiny_model_dir: Path, names: tuple[str, ...] = ("v1", "v2")
                  ) -> Path:
    root = tmp_path / "models"
    for i, n in enumerate(names):
        shutil.copytree(tiny_model_dir, root / n)
        reg.write_metadata(root / n, {"version": n, "kind": "full", "created": f"2025-01-0{i + 1}",
                                      "metrics": {"balanced_accuracy": 0.5 + i / 10}})
    return root


def test_gate_refuses_a_worse_model() -> None:
    margin = 0.02
    assert reg.gate({"balanced_accuracy": 0.79, "missed_address_rate": 0.10}, GOOD,
                    margin).promote  # within the margin
    worse = reg.gate({"balanced_accuracy": 0.77, "missed_address_rate": 0.05}, GOOD, margin)
    assert not worse.promote and "below the active" in worse.reasons[0]
    missed = reg.gate({"balanced_accuracy": 0.95, "missed_address_rate": 0.11}, GOOD, margin)
    assert not missed.promote and "higher than the active" in missed.reasons[1]
    assert reg.gate({"balanced_accuracy": 0.1, "missed_address_rate": 1.0}, None, margin).promote
    assert not reg.gate({"missed_address_rate": 0.0}, GOOD, margin).promote  # cannot compare


def test_versions_activate_and_pointer(tmp_path: Path, tiny_model_dir: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    root = make_registry(tmp_path, tiny_model_dir)
    assert reg.active(root) is None and read_active(root) is None
    v = reg.new_version_dir(root, "x")
    assert v.parent == root and v.name.endswith("-x") and reg.new_version_dir(root, "x") != v
    assert reg.activate(root, "v1") is None
    assert reg.activate(root, "v2") == "v1"
    assert (root / "active").read_text() == "v2\n"
    assert not list(root.glob(".active*"))  # the temp file was renamed, not left behind
    active = read_active(root)
    assert active is not None and active.version == "v2" and active.path == str(root / "v2")
    with pytest.raises(reg.RegistryError, match="does not exist"):
        reg.activate(root, "v9")
    with pytest.raises(reg.RegistryError):
        reg.activate(root, "../v1")
    assert [x.name for x in reg.list_versions(root)] == ["v1", "v2"]  # the empty one is no model
    assert chimein(["models", "list", "--registry", str(root)]) == 0
    out = capsys.readouterr().out
    assert "* " in out and "v2" in out and "0.600" in out
    assert chimein(["models", "activate", "v1", "--registry", str(root)]) == 0
    assert reg.active(root) == "v1"
    assert chimein(["models", "activate", "nope", "--registry", str(root)]) == 2


def test_lora_version_resolves_to_base_and_adapter(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "v3").mkdir(parents=True)
    (root / "v3" / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "/somewhere/base"}))
    reg.activate(root, "v3")
    a = read_active(root)
    assert a is not None and (a.path, a.adapter) == ("/somewhere/base", str(root / "v3"))


def test_load_engine_follows_the_registry(tmp_path: Path, tiny_model_dir: Path) -> None:
    root = make_registry(tmp_path, tiny_model_dir)
    s = config.parse({"model": {"registry_dir": str(root), "device": "cpu"}})
    with pytest.raises(EngineError, match="no active version"):
        load_engine(s)
    reg.activate(root, "v2")
    eng = load_engine(s)
    assert eng.version == "v2"
    (root / "active").write_text("gone\n")
    with pytest.raises(EngineError, match="does not exist"):
        load_engine(s)


async def test_reload_swaps_the_model_under_a_running_core(tmp_path: Path,
                                                           tiny_model_dir: Path,
                                                           queue_adapter) -> None:  # type: ignore[no-untyped-def]
    root = make_registry(tmp_path, tiny_model_dir)
    reg.activate(root, "v1")
    s = config.parse({"model": {"registry_dir": str(root), "device": "cpu",
                                "registry_poll_seconds": 0.5},
                      "generation": {"max_new_tokens": 3, "temperature": 0.0}})
    engine = load_engine(s)
    core = Core(engine, Policy(s.policy, ["assistant"]), bot=s.bot, runtime=s.runtime)
    core.add_adapter(queue_adapter)
    records: list[DecisionRecord] = []
    core.listeners.append(records.append)
    keys = [ConversationKey("test", "c1"), ConversationKey("test", "c2")]
    sent = []
    async with core, RegistryWatcher(core, s, poll_seconds=0.02) as watcher:
        assert watcher.current == "v1"
        for i in range(12):  # queued while the swap happens
            m = Message(keys[i % 2], f"u{i}", f"User{i}",
                        f"assistant, question {i}?" if i % 4 == 0 else f"message {i}",
                        message_id=f"m{i}")
            sent.append(m)
            await core.handle(m)
            if i == 3:
                reg.activate(root, "v2")
        await asyncio.wait_for(_until(lambda: watcher.current == "v2"), timeout=30)
        await asyncio.wait_for(core.flush(), timeout=30)
        assert core.engine.version == "v2" and watcher.swaps == 1
        handled = [m.message_id for r in records for m in r.messages]
        assert sorted(handled) == sorted(m.message_id for m in sent)  # none dropped
        # the history of each conversation kept every message across the swap
        for k in keys:
            users = [t for t in core.sessions.get(k).turns if t.role == "user"]
            assert len(users) == 6
        # after the swap, decisions run on the new model
        await core.handle(Message(keys[0], "u", "Ann", "assistant, still there?",
                                  message_id="late"))
        await asyncio.wait_for(core.flush(), timeout=30)
        assert records[-1].messages[0].message_id == "late" and records[-1].text
        # the admin `reload` command reloads even when the pointer did not move
        line = await watcher.reload()
        assert line == "reloaded: now serving v2" and watcher.swaps == 2
        # a broken pointer leaves the current model serving
        (root / "active").write_text("missing\n")
        assert await watcher.check() is False and core.engine.version == "v2"
        assert "missing" in (watcher.last_error or "")


async def _until(cond) -> None:  # type: ignore[no-untyped-def]
    while not cond():
        await asyncio.sleep(0.01)


# -- retrain ---------------------------------------------------------------------------------
def _conv(i: int, speak: bool) -> dict:  # type: ignore[type-arg]
    msgs = [{"role": "user", "name": "Ann", "content": f"the build {i} is red again"},
            {"role": "user", "name": "Bob", "content": f"assistant, what is {i} plus {i}?"}]
    if speak:
        msgs.append({"role": "assistant", "content": f"{2 * i}."})
    msgs.append({"role": "user", "name": "Ann", "content": "ok thanks"})
    return {"id": f"{'s' if speak else 'q'}{i}", "tags": ["en"], "messages": msgs}


def _write(path: Path, convs: list) -> Path:  # type: ignore[type-arg]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(c) + "\n" for c in convs), "utf-8")
    return path


@pytest.mark.slow
def test_retrain_promotes_first_then_gate_refuses_a_worse_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.finetune import Hyper
    from training.retrain import retrain
    from training.tiny import save_tiny

    starter = tmp_path / "starter"
    # The starter data teaches silence everywhere, the validation set wants answers to
    # addresses: a model trained on it is always silent, missing every address.
    _write(starter / "train.jsonl", [_conv(i, speak=False) for i in range(12)])
    _write(starter / "valid.jsonl", [_conv(i, speak=True) for i in range(100, 104)])
    exported = _write(tmp_path / "export.jsonl", [_conv(i, speak=False) for i in range(12, 32)])
    root = tmp_path / "models"
    s = config.parse({"policy": {"threshold": 0.5}})
    hp = Hyper.from_settings(s.training, from_scratch="tiny", hidden=32, layers=1, heads=2,
                             vocab_size=300, max_steps=40, learning_rate=1e-2, batch_size=2,
                             max_seq_len=256)

    first = retrain(s, registry=root, exported=[str(exported)], hp=hp, device="cpu",
                    starter_dir=starter, progress=False)
    assert first.promoted and reg.active(root) == first.version
    assert first.new_metrics["missed_address_rate"] == 1.0  # it learned to stay silent
    meta = reg.read_metadata(root / first.version)
    assert meta["gate"]["promoted"] and meta["retrain"]["exported_train"] == 18
    assert meta["retrain"]["exported"][0]["sha256"]

    # an untrained model speaks on everything: it misses no address
    chatty = save_tiny(root / "chatty", ["the build is red"] * 50, vocab_size=300, hidden=32,
                       layers=1, heads=2)
    reg.activate(root, chatty.name)
    second = retrain(s, registry=root, exported=[str(exported)], hp=hp, device="cpu",
                     starter_dir=starter, progress=False)
    assert not second.promoted and reg.active(root) == "chatty"
    assert second.active_metrics is not None
    assert second.active_metrics["missed_address_rate"] == 0.0
    assert any("missed-address rate" in r and "higher" in r for r in second.reasons)
    assert "NOT PROMOTED" in second.table and "active: chatty" in second.table
    assert not reg.read_metadata(root / second.version)["gate"]["promoted"]

    # the command prints the comparison table and exits 3 when the gate refuses
    code = chimein(["retrain", "--no-store", "--registry", str(root), "--data", str(exported),
                    "--starter",
                    str(starter), "--from-scratch", "tiny", "--max-steps", "40", "--lr", "1e-2",
                    "--batch-size", "2", "--max-seq-len", "256",
                    "--device", "cpu", "--quiet", "--outcome", str(tmp_path / "out.json")])
    assert code == 3
    assert "NOT PROMOTED" in capsys.readouterr().out
    assert reg.active(root) == "chatty"
    outcome = json.loads((tmp_path / "out.json").read_text())  # what a running bot reads
    assert outcome["promoted"] is False and outcome["verdict"].startswith("NOT PROMOTED")


# -- the admin `retrain` / `reload` commands of a running bot ----------------------------------
async def test_admin_retrain_in_chat_runs_a_child_and_swaps_to_its_version(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    """`@assistant retrain` in the console starts a child process (here a stand-in for
    `chimein retrain` that promotes v2 the way the gate does), and when it ends the running
    core serves v2; `@assistant reload` reloads in place. The real `chimein retrain` is tested
    above; its command line is checked here."""
    import io
    import sys

    from adapters import admin as retrain_job
    from adapters.console import run_console

    root = make_registry(tmp_path, tiny_model_dir)
    reg.activate(root, "v1")
    s = config.parse({"model": {"registry_dir": str(root), "device": "cpu",
                                "registry_poll_seconds": 3600},
                      "bot": {"admins": ["console:admin"]},
                      "store": {"path": str(tmp_path / "data" / "s.sqlite3")},
                      "generation": {"max_new_tokens": 3, "temperature": 0.0}})
    argv = retrain_job.retrain_argv(s)
    assert argv[1:] == ["-m", "adapters.cli", "retrain", "--data-from-store", "--quiet"]
    # a stand-in for `chimein retrain`: it promotes v2 and writes its outcome as JSON to the
    # --outcome file the job appends to its command line
    child = (f"import json, sys; from training import registry; "
             f"registry.activate({str(root)!r}, 'v2'); print('a table'); "
             "open(sys.argv[sys.argv.index('--outcome') + 1], 'w').write("
             "json.dumps({'promoted': True, 'verdict': 'PROMOTED: v2 is now active'}))")
    jobs: list[retrain_job.RetrainJob] = []
    real_job = retrain_job.RetrainJob

    def job_with_child(settings, watcher=None, **kw):  # type: ignore[no-untyped-def]
        jobs.append(real_job(settings, watcher, announce=kw.get("announce"),
                             argv=[sys.executable, "-c", child]))
        return jobs[-1]

    retrain_job.RetrainJob = job_with_child  # type: ignore[assignment,misc]
    done = asyncio.Event()

    async def feed():  # type: ignore[no-untyped-def]
        yield "alice: @assistant retrain\n"
        yield "admin: @assistant retrain\n"
        await asyncio.wait_for(_until(lambda: bool(jobs) and jobs[0].task is not None),
                               timeout=30)
        await asyncio.wait_for(jobs[0].task, timeout=60)  # type: ignore[arg-type]
        yield "admin: @assistant reload\n"
        done.set()
        yield "/quit\n"

    out = io.StringIO()
    try:
        rc = await run_console(s, store_path=s.store.path, lines=feed(), out=out,
                               engine=load_engine(s))
    finally:
        retrain_job.RetrainJob = real_job  # type: ignore[misc]
    text = out.getvalue()
    assert rc == 0 and done.is_set()
    assert "Sorry, only this bot's admins can use `retrain`" in text  # alice is no admin
    assert len(jobs) == 1 and jobs[0].returncode == 0
    assert "Retraining started (log: " in text and "if it passes the checks" in text
    assert "reloaded: now serving v2" in text  # the finished retrain had already swapped
    log_file = jobs[0].log_file
    assert log_file is not None and "a table" in log_file.read_text()  # the log: for people
    outcome = jobs[0].outcome_file  # the outcome: JSON, for the bot
    assert outcome is not None and json.loads(outcome.read_text())["promoted"] is True
    # the admin hears how it ended, in the chat where they asked
    assert "assistant: Retrain finished: PROMOTED: v2 is now active." in text
    assert log_file.parent == tmp_path / "data"


@pytest.mark.slow
def test_retrain_reads_the_store_by_default_and_marks_its_export_used(tmp_path: Path) -> None:
    """`chimein retrain` with only a config: consented conversations come out of the store,
    are trained on, and their export is marked used (forget no longer edits it)."""
    import sqlite3

    from bot.store import Store

    store_path = tmp_path / "data" / "chimein.sqlite3"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[store]\npath = "{store_path}"\n[model]\nregistry_dir = '
                   f'"{tmp_path / "models"}"\n', "utf-8")
    starter = tmp_path / "starter"
    _write(starter / "train.jsonl", [_conv(i, speak=i % 2 == 0) for i in range(6)])
    _write(starter / "valid.jsonl", [_conv(i, speak=True) for i in range(100, 103)])
    key = ConversationKey("test", "general")

    async def log_chat() -> None:
        async with Store(store_path) as s:
            await s.set_channel_logging("test", "general", True)
            for u in ("ann", "bob"):
                await s.set_consent("test", u, True)
            t = 1_000_000.0
            for i in range(30):  # 10 conversations, an idle day between them
                who = ("ann", "bob", "ann")[i % 3]
                await s.record_message(Message(key, who, who.title(), f"line {i} of chat",
                                               message_id=str(i),
                                               ts=t + (i // 3) * 86400 + i * 60))

    asyncio.run(log_chat())
    code = chimein(["--config", str(cfg), "retrain", "--starter", str(starter),
                    "--from-scratch", "tiny", "--max-steps", "4", "--batch-size", "2",
                    "--max-seq-len", "256", "--device", "cpu", "--quiet"])
    assert code in (0, 3)
    root = tmp_path / "models"
    (version,) = [p for p in root.iterdir() if p.is_dir()]
    meta = reg.read_metadata(version)
    assert meta["retrain"]["exported_train"] + meta["retrain"]["exported_valid"] == 10
    con = sqlite3.connect(store_path)
    used = con.execute("SELECT COUNT(*), COUNT(used_ts) FROM exports").fetchone()
    con.close()
    assert used == (1, 1)

    # The first version is active (nothing to compare with). Retraining with no model named
    # follows the active one's recipe: from scratch, the tiny preset, its size; flags win.
    assert reg.active(root) == version.name
    code = chimein(["--config", str(cfg), "retrain", "--starter", str(starter),
                    "--max-steps", "2", "--device", "cpu", "--quiet"])
    assert code in (0, 3)
    (second,) = [p for p in root.iterdir() if p.is_dir() and p != version]
    hp1 = meta["hyperparameters"]
    hp2 = reg.read_metadata(second)["hyperparameters"]
    assert hp2["from_scratch"] == "tiny" and hp2["max_steps"] == 2
    assert hp2["learning_rate"] == 2e-3 and hp2["epochs"] == hp1["epochs"] == 8.0
    assert [hp2[k] for k in ("hidden", "layers", "heads", "vocab_size")] \
        == [hp1[k] for k in ("hidden", "layers", "heads", "vocab_size")]


async def test_a_failed_retrain_is_reported_to_the_admin(tmp_path: Path) -> None:
    import sys

    from adapters.admin import RetrainJob
    from bot.message import Message

    s = config.parse({"store": {"path": str(tmp_path / "s.sqlite3")}})
    told: list[str] = []
    child = "import sys; print('error: no base model: set training.base_model'); sys.exit(2)"
    async def announce(msg: Message, text: str) -> None:
        told.append(text)

    job = RetrainJob(s, None, announce=announce, argv=[sys.executable, "-c", child])
    msg = Message(ConversationKey("test", "c"), "admin", "Admin", "retrain", message_id="1")
    first = await job.start(msg)
    assert first.startswith("Retraining started") and "registry_dir" in first
    assert (await job.start(msg)).startswith("A retrain is already running")
    assert job.task is not None
    assert await asyncio.wait_for(job.task, timeout=60) == 2
    want = ("Retrain ended with exit status 2: error: no base model: set training.base_model "
            f"(log: {job.log_file}).")
    assert told == [want]
