"""The async runtime with a scripted engine: queues, coalescing, policy, error boundary."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bot.config import PolicySettings
from bot.core import Core, DecisionRecord
from bot.engine.fake import ScriptedEngine
from bot.message import ConversationKey, Deletion, Message
from bot.policy import Policy
from tests.conftest import QueueAdapter

K1 = ConversationKey("test", "c1")
K2 = ConversationKey("test", "c2")


def msg(key: ConversationKey, name: str, text: str, i: int = 0, **kw) -> Message:  # type: ignore[no-untyped-def]
    return Message(key, name.lower(), name, text, message_id=f"{key.channel}-{i}", **kw)


def make_core(engine, **policy) -> tuple[Core, list[DecisionRecord]]:  # type: ignore[no-untyped-def]
    core = Core(engine, Policy(PolicySettings(**policy), ["assistant", "助手"]))
    records: list[DecisionRecord] = []
    core.listeners.append(records.append)
    return core, records


async def test_addressed_is_answered_and_silence_posts_nothing(queue_adapter) -> None:  # type: ignore[no-untyped-def]
    eng = ScriptedEngine()  # p_silence 0.9: never chimes in by itself
    core, records = make_core(eng)
    core.add_adapter(queue_adapter)
    async with core:
        await core.handle(msg(K1, "Ann", "hi all", 1))
        await core.flush()
        await core.handle(msg(K1, "Bob", "assistant, what is 2+2?", 2))
        await core.flush()
    assert [r.text for r in queue_adapter.sent] == ["echo: assistant, what is 2+2?"]
    assert queue_adapter.sent[0].in_reply_to == "c1-2" and queue_adapter.sent[0].addressed
    assert [r.reason for r in records] == ["model", "addressed"]
    assert queue_adapter.typing_count == 1


async def test_burst_while_busy_answers_the_address_in_its_place(queue_adapter) -> None:  # type: ignore[no-untyped-def]
    """A burst is one batch, but an address in it is a decision point of its own: "a" is its
    context, "c" after it gets one more decision (Bob was just answered: a follow-up)."""
    eng = ScriptedEngine(delay=0.2)
    core, records = make_core(eng)
    core.add_adapter(queue_adapter)
    async with core:
        await core.handle(msg(K1, "Ann", "first", 0))
        await asyncio.sleep(0.05)  # the model is now busy with "first"
        for i, t in enumerate(["a", "assistant, b?", "c"], start=1):
            await core.handle(msg(K1, "Bob", t, i))
        await core.flush()
    decides = [c for c in eng.calls if c[0] == "decide"]
    assert decides == [("decide", 1), ("decide", 2), ("decide", 1)]
    assert [m.text for m in records[1].messages] == ["a", "assistant, b?"]
    assert records[1].addressed and records[1].address == "direct"
    assert records[2].address == "follow-up" and records[2].text is None
    assert [(r.text, r.in_reply_to) for r in queue_adapter.sent] == [
        ("echo: assistant, b?", "c1-2")]


async def test_burst_while_the_model_is_busy_with_another_channel_is_coalesced(
        queue_adapter) -> None:  # type: ignore[no-untyped-def]
    """The model has one inference thread: a burst in c1 that arrives while it is busy with
    c2 waits as a whole and gets one decision."""
    eng = ScriptedEngine(delay=0.2)
    core, records = make_core(eng)
    core.add_adapter(queue_adapter)
    async with core:
        await core.handle(msg(K2, "Ann", "something in c2", 0))
        await asyncio.sleep(0.05)  # the model is now busy with c2
        for i, t in enumerate(["a", "b", "c"], start=1):
            await core.handle(msg(K1, "Bob", t, i))
        await core.flush()
    c1 = [r for r in records if r.key == K1]
    assert len(c1) == 1 and [m.text for m in c1[0].messages] == ["a", "b", "c"]


async def test_other_bots_and_own_messages_are_never_answered(queue_adapter) -> None:  # type: ignore[no-untyped-def]
    eng = ScriptedEngine(script=lambda turns: 0.0)  # would chime in on everything
    core, records = make_core(eng)
    core.add_adapter(queue_adapter)
    async with core:
        await core.handle(msg(K1, "CIBot", "assistant, build #12 failed", 1, is_bot=True))
        await core.handle(msg(K1, "assistant", "my own earlier answer", 2, is_self=True))
        await core.flush()
    assert queue_adapter.sent == [] and records == []
    session = core.sessions.get(K1)
    assert session.turns[0].name == "CIBot"  # other bots stay in the history as context


async def test_mention_mode_does_not_run_the_model(queue_adapter) -> None:  # type: ignore[no-untyped-def]
    eng = ScriptedEngine(script=lambda turns: 0.0)
    core, records = make_core(eng, mode="mention")
    core.add_adapter(queue_adapter)
    async with core:
        await core.handle(msg(K1, "Ann", "chatting away", 1))
        await core.flush()
        await core.handle(msg(K1, "Ann", "@assistant hi", 2))
        await core.flush()
    assert [c[0] for c in eng.calls] == ["observe", "decide", "respond"]
    assert [r.reason for r in records] == ["listen-only", "addressed"]
    assert len(queue_adapter.sent) == 1


async def test_always_mode_and_threshold(queue_adapter) -> None:  # type: ignore[no-untyped-def]
    eng = ScriptedEngine(script=lambda turns: 0.6)
    core, records = make_core(eng, threshold=0.7)
    core.add_adapter(queue_adapter)
    async with core:
        await core.handle(msg(K1, "Ann", "hm", 1))  # 0.6 < 0.7: chimes in
        await core.flush()
        core.policy.set_channel(K2, mode="always")
        core.policy.set_channel(K1, threshold=0.5)
        await core.handle(msg(K1, "Ann", "hm again", 2))  # 0.6 >= 0.5: silent
        await core.handle(msg(K2, "Cy", "anything", 3))  # always: answered
        await core.flush()
    assert sorted(r.reason for r in records) == ["always", "model", "model"]
    assert [r.key.channel for r in queue_adapter.sent] == ["c1", "c2"]


async def test_cooldown_caps_unprompted_chimeins(queue_adapter) -> None:  # type: ignore[no-untyped-def]
    eng = ScriptedEngine(script=lambda turns: 0.0)
    core, records = make_core(eng, cooldown_max_chimeins=2, cooldown_window_seconds=600)
    core.add_adapter(queue_adapter)
    async with core:
        for i in range(4):
            await core.handle(msg(K1, "Ann", f"fact {i}", i))
            await core.flush()
        await core.handle(msg(K1, "Ann", "assistant, still there?", 9))
        await core.flush()
    assert [r.reason for r in records] == ["model", "model", "cooldown", "cooldown",
                                           "addressed"]
    assert len(queue_adapter.sent) == 3  # addressed answers are never capped
    s = core.sessions.get(K1)
    assert s.turns[5].silent and s.turns[7].silent and s.pending is None


async def test_error_in_one_conversation_never_stops_the_others(queue_adapter, caplog) -> None:  # type: ignore[no-untyped-def]
    def script(turns):  # type: ignore[no-untyped-def]
        if "boom" in (turns[-2].content or ""):
            raise RuntimeError("model exploded")
        return 0.9

    eng = ScriptedEngine(script=script)
    core, _ = make_core(eng)
    core.add_adapter(queue_adapter)
    async with core:
        await core.handle(msg(K1, "Ann", "assistant, boom", 1))
        await core.handle(msg(K2, "Bob", "assistant, hello", 2))
        await core.flush()
        await core.handle(msg(K1, "Ann", "assistant, are you ok?", 3))
        await core.flush()
    texts = {(r.key.channel, r.text) for r in queue_adapter.sent}
    assert ("c2", "echo: assistant, hello") in texts
    assert ("c1", "echo: assistant, are you ok?") in texts
    assert any("went wrong" in t for _, t in texts)  # the addressed user got an apology
    assert core.errors == 1 and "model exploded" in caplog.text


async def test_inference_runs_off_the_event_loop_on_one_worker(queue_adapter) -> None:  # type: ignore[no-untyped-def]
    threads: set[str] = set()
    loop_thread = threading.current_thread().name

    def script(turns):  # type: ignore[no-untyped-def]
        threads.add(threading.current_thread().name)
        return 0.9

    core, _ = make_core(ScriptedEngine(script=script))
    core.add_adapter(queue_adapter)
    async with core:
        for i in range(6):
            await core.handle(msg(ConversationKey("test", f"c{i}"), "Ann", "hi", i))
        await core.flush()
    assert len(threads) == 1 and loop_thread not in threads


async def test_events_without_store_and_huge_odd_messages(queue_adapter) -> None:  # type: ignore[no-untyped-def]
    core, _ = make_core(ScriptedEngine())
    core.add_adapter(queue_adapter)
    async with core:
        await core.handle(Deletion(K1, "x"))
        await core.handle(msg(K1, "Ann", "\u202eRTL\u200b zero\x00width " + "🙂" * 50_000, 1))
        await core.handle(msg(K1, "Ann", "", 2, attachments=("cat.png",)))
        await core.flush()
    s = core.sessions.get(K1)
    assert "\x00" not in (s.turns[0].content or "")
    assert len(s.turns[0].content or "") <= core.runtime.max_message_chars + 20
    assert s.turns[2].content == "[attachment: cat.png]"


async def test_swap_engine_keeps_queued_messages(queue_adapter) -> None:  # type: ignore[no-untyped-def]
    old = ScriptedEngine(delay=0.1, version="v1", answer=lambda t: "old")
    new = ScriptedEngine(version="v2", answer=lambda t: "new")
    core, _ = make_core(old)
    core.add_adapter(queue_adapter)
    async with core:
        await core.handle(msg(K1, "Ann", "assistant, one", 1))
        await asyncio.sleep(0.02)
        swap = asyncio.create_task(core.swap_engine(new))
        await asyncio.sleep(0.01)
        await core.handle(msg(K1, "Ann", "assistant, two", 2))
        await swap
        await core.flush()
    assert [r.text for r in queue_adapter.sent] == ["old", "new"]
    assert core.engine is new and core.sessions.get(K1).cache is None


async def test_closed_core_refuses_events() -> None:
    core, _ = make_core(ScriptedEngine())
    await core.close()
    with pytest.raises(RuntimeError, match="closed"):
        await core.handle(msg(K1, "Ann", "hi"))


async def test_ambiguous_and_follow_up_use_the_lenient_threshold_in_every_mode(
        queue_adapter) -> None:  # type: ignore[no-untyped-def]
    """p_silence 0.6: silent at threshold 0.5, answered at ambiguous_threshold 0.8. In
    `mention` mode a plain message is listen-only, but an ambiguous one and a follow-up go to
    the model; a follow-up ends when someone else speaks."""
    eng = ScriptedEngine(script=lambda turns: 0.6)
    core, records = make_core(eng, mode="mention", threshold=0.5, ambiguous_threshold=0.8)
    core.add_adapter(queue_adapter)
    async with core:
        for i, (who, text) in enumerate([
                ("Ann", "lunch?"),                                # none: listen-only
                ("Ann", "wonder what assistant would say"),       # ambiguous: answered
                ("Ann", "and in Berlin?"),                         # follow-up: answered
                ("Bob", "hm"),                                     # someone else: listen
                ("Ann", "and Paris?")]):                           # not a follow-up now
            await core.handle(msg(K1, who, text, i))
            await core.flush()
    assert [(r.address, r.reason) for r in records] == [
        (None, "listen-only"), ("ambiguous", "model"), ("follow-up", "model"),
        (None, "listen-only"), (None, "listen-only")]
    assert [r.in_reply_to for r in queue_adapter.sent] == ["c1-1", "c1-2"]
    assert all(r.addressed for r in queue_adapter.sent)  # threaded like an answer


async def test_an_error_at_one_address_does_not_cost_the_next_person_their_answer(
        queue_adapter, caplog) -> None:  # type: ignore[no-untyped-def]
    def script(turns):  # type: ignore[no-untyped-def]
        if "boom" in (turns[-2].content or ""):
            raise RuntimeError("model exploded")
        return 0.9

    eng = ScriptedEngine(script=script, delay=0.1)
    core, _ = make_core(eng)
    core.add_adapter(queue_adapter)
    async with core:
        await core.handle(msg(K2, "Cy", "busy elsewhere", 0))
        await asyncio.sleep(0.03)  # one batch for the two below
        await core.handle(msg(K1, "Ann", "assistant, boom", 1))
        await core.handle(msg(K1, "Bob", "assistant, hello?", 2))
        await core.flush()
    assert [(r.in_reply_to, r.text[:5]) for r in queue_adapter.sent] == [
        ("c1-1", "Sorry"), ("c1-2", "echo:")]
    assert core.errors == 1 and "model exploded" in caplog.text


async def test_a_new_thread_gets_its_history_from_the_adapter_once(queue_adapter) -> None:  # type: ignore[no-untyped-def]
    from bot.message import user

    fetched: list[tuple[ConversationKey, str | None]] = []

    async def history(key: ConversationKey, before: Message):  # type: ignore[no-untyped-def]
        fetched.append((key, before.message_id))
        return [user("Ann", "the release checklist, item 2 is the migration")]

    queue_adapter.history = history
    eng = ScriptedEngine()
    core, _ = make_core(eng)
    core.add_adapter(queue_adapter)
    thread = ConversationKey("test", "c1", "t1")
    async with core:
        await core.handle(msg(thread, "Bob", "what about the second one?", 1))
        await core.handle(msg(thread, "Bob", "anyone?", 2))
        await core.flush()
        await core.handle(msg(K1, "Bob", "not a thread", 3))
        await core.flush()
    assert fetched == [(thread, "c1-1")]  # once, for the thread, before its first message
    s = core.sessions.get(thread)
    assert s.turns[0].content == "the release checklist, item 2 is the migration"


async def test_slash_commands_go_through_the_conversations_queue(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bot import config as config_mod
    from bot.commands import CommandHandler
    from bot.store import Store

    settings = config_mod.parse({"store": {"path": str(tmp_path / "s.sqlite3"),
                                           "default_logging": True}})
    async with Store.from_settings(settings.store) as store:
        policy = Policy(settings.policy, ["assistant"])
        eng = ScriptedEngine(delay=0.1)
        core = Core(eng, policy, store=store, commands=CommandHandler(settings, store, policy))
        adapter = QueueAdapter()
        core.add_adapter(adapter)
        async with core:
            await core.handle(msg(K1, "Ann", "assistant, what's new?", 1))
            await asyncio.sleep(0.02)  # the model is busy with Ann's question
            answer = await core.command(msg(K1, "Bob", "", 2), "optin")
            assert adapter.sent and adapter.sent[0].in_reply_to == "c1-1"  # after Ann's
            assert answer is not None and "opted in" in answer
            assert len(adapter.sent) == 1  # the slash command's answer is returned, not posted
            # a typed command is never stored: it is not conversation
            await core.handle(msg(K1, "Bob", "assistant optin", 3))
            await core.handle(msg(K1, "Bob", "hello all", 4))
            await core.flush()
        rows = await store._read("SELECT text FROM messages WHERE role = 'user'")
    assert [r[0] for r in rows] == ["hello all"]  # Bob opted in; his command is not kept
