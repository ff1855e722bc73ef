"""The real slack-bolt app (Socket Mode and HTTP Events API) against FakeSlack on 127.0.0.1,
driving the real core with the scripted engine."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from adapters.common import AdapterError
from adapters.slack import MAX_POST_CHARS, STATUS_TEXT, SlackAdapter
from bot.config import Settings
from bot.core import Core, DecisionRecord
from bot.engine.fake import ScriptedEngine
from bot.message import ConversationKey, Deletion, Edit, Reaction
from bot.policy import Policy
from tests.fakes import RecordingStore, chime_on_429, marked_echo
from tests.fakes.fake_slack import FakeSlack

pytestmark = pytest.mark.timeout(60)

ANN, BOB = "U0ANN", "U0BOB"
GENERAL = "C0GENERAL"


@dataclass
class Env:
    fake: FakeSlack
    core: Core
    adapter: SlackAdapter
    engine: ScriptedEngine
    store: RecordingStore
    records: list[DecisionRecord]

    async def settle(self, event_id: str | None = None) -> None:
        """Until the app acknowledged what was sent (it acks after core.handle) and the core
        finished with it."""
        if event_id is not None:
            await self.fake.wait_acked(event_id)
        else:
            await self.fake.wait_for(lambda: not self.fake._pending)
        await asyncio.wait_for(self.core.flush(), 5)

    def texts(self) -> list[str]:
        return [p["text"] for p in self.fake.posts]


async def make_env(fake: FakeSlack, settings: Settings | None = None, *,
                   mode: str = "socket", **slack: Any) -> tuple[Core, SlackAdapter, Env]:
    settings = settings or Settings()
    engine = ScriptedEngine(script=chime_on_429, answer=marked_echo)
    store = RecordingStore()
    core = Core(engine, Policy(settings.policy, settings.bot.wake_words), bot=settings.bot,
                store=store)
    records: list[DecisionRecord] = []
    core.listeners.append(records.append)
    ss = dataclasses.replace(settings.slack, enabled=True, mode=mode,
                             api_base_url=fake.base_url, **slack)
    adapter = SlackAdapter(core, ss, settings.bot, bot_token=fake.bot_token,
                           app_token=fake.app_token, signing_secret=fake.signing_secret,
                           ping_interval=5.0)
    core.add_adapter(adapter)
    return core, adapter, Env(fake, core, adapter, engine, store, records)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with FakeSlack() as fake:
        core, adapter, e = await make_env(fake)
        async with core, adapter:
            await fake.wait_connected()
            yield e


async def test_address_gets_a_threaded_answer_without_markers(env: Env) -> None:
    ts = await env.fake.user_says(GENERAL, ANN, "assistant, what is 2+2?")
    posts = await env.fake.wait_posts(1)
    assert posts[0]["channel"] == GENERAL and posts[0]["thread_ts"] == ts  # reply_in_thread
    assert posts[0]["text"] == "echo: assistant, what is 2+2?"
    assert "(response)" not in posts[0]["text"] and "(silence)" not in posts[0]["text"]
    await env.settle()
    assert len(env.fake.posts) == 1  # its own echoed post was not answered
    assert env.records[-1].messages[0].author_name == "Ann"  # users.info resolved the name
    assert env.store.bot_turns[0][2] is not None  # the posted ts went back to the core


async def test_mention_event_pair_is_answered_once_and_names_render(env: Env) -> None:
    # Slack sends both `message` and `app_mention` for one mention.
    await env.fake.user_says(GENERAL, ANN, "<@U0BOT> ask <@U0BOB> about 503")
    await env.fake.wait_posts(1)
    await env.settle()
    assert env.texts() == ["echo: @assistant ask @Bob about 503"]
    assert env.adapter.duplicates == 1
    m = env.records[-1].messages[0]
    assert m.mentions_bot and m.text == "@assistant ask @Bob about 503"
    # Names are cached: one users.info per person however often they appear.
    await env.fake.user_says(GENERAL, ANN, "<@U0BOT> and <@U0BOB> again?")
    await env.fake.wait_posts(2)
    lookups = [a["user"] for m, a in env.fake.calls if m == "users.info"]
    assert sorted(lookups) == [ANN, BOB]


async def test_silence_posts_nothing_and_a_chime_in_goes_to_the_channel(env: Env) -> None:
    await env.fake.user_says(GENERAL, ANN, "anyone know why the deploy failed?")
    await env.settle()
    assert env.fake.posts == [] and env.records[-1].decision.p_silence == 0.95  # type: ignore[union-attr]
    await env.fake.user_says(GENERAL, BOB, "we got a 429 from the API")
    posts = await env.fake.wait_posts(1)
    assert posts[0]["text"] == "echo: we got a 429 from the API"
    assert "thread_ts" not in posts[0]  # an unprompted remark is not threaded
    await env.settle()
    assert [r.reason for r in env.records] == ["model", "model"]


async def test_other_bots_are_not_answered(env: Env) -> None:
    ev = env.fake.message_event(GENERAL, "U0RELBOT", "assistant, deploy 429 please")
    ev.update(bot_id="B0RELBOT", bot_profile={"id": "B0RELBOT", "name": "Release App"})
    eid = await env.fake.send_event(ev)
    ci = {"type": "message", "subtype": "bot_message", "text": "assistant, build 429 done",
          "bot_id": "B0CI", "username": "CI", "ts": env.fake.next_ts(), "channel": GENERAL,
          "channel_type": "channel"}
    eid2 = await env.fake.send_event(ci)
    await env.settle(eid)
    await env.settle(eid2)
    assert env.fake.posts == []
    assert env.core.sessions.peek(ConversationKey("slack", GENERAL)) is not None  # context


async def test_thread_is_its_own_conversation_with_its_parent_as_context(env: Env) -> None:
    parent = await env.fake.user_says(GENERAL, ANN, "assistant, what does 429 mean?")
    await env.fake.wait_posts(1)
    await env.fake.user_says(GENERAL, BOB, "assistant, and 503?", thread_ts=parent)
    posts = await env.fake.wait_posts(2)
    assert posts[1]["thread_ts"] == parent and posts[1]["text"] == "echo: assistant, and 503?"
    thread = env.core.sessions.peek(ConversationKey("slack", GENERAL, parent))
    assert thread is not None
    seen = [(t.role, t.name, t.content) for t in thread.turns]
    assert seen[:2] == [("user", "Ann", "assistant, what does 429 mean?"),
                        ("assistant", "assistant", "echo: assistant, what does 429 mean?")]
    assert seen[2] == ("user", "Bob", "assistant, and 503?")
    # The fake allows the AI-app status in threads: shown while answering, then cleared.
    await env.settle()
    assert [s["status"] for s in env.fake.statuses] == [STATUS_TEXT, ""]
    assert env.fake.statuses[0]["thread_ts"] == parent


async def test_status_indicator_degrades_when_not_allowed(env: Env) -> None:
    env.fake.fail["assistant.threads.setStatus"] = "missing_scope"
    parent = await env.fake.user_says(GENERAL, ANN, "hello")
    for i in range(2):
        await env.fake.user_says(GENERAL, BOB, f"assistant, q{i}?", thread_ts=parent)
        await env.fake.wait_posts(i + 1)
    calls = [m for m, _ in env.fake.calls if m == "assistant.threads.setStatus"]
    assert len(calls) == 1  # refused once, never asked again; the answers still went out


async def test_dm_is_answered_without_address_and_without_thread(env: Env) -> None:
    await env.fake.user_says("D0ANNDM", ANN, "how many seconds in a day?")
    posts = await env.fake.wait_posts(1)
    assert posts[0]["channel"] == "D0ANNDM" and "thread_ts" not in posts[0]
    await env.settle()
    assert env.records[-1].messages[0].is_dm and env.records[-1].mode == "always"


async def test_redelivered_event_is_answered_once(env: Env) -> None:
    ev = env.fake.message_event(GENERAL, ANN, "assistant, once please")
    eid = await env.fake.send_event(ev)
    await env.fake.send_event(ev, event_id=eid, retry_attempt=1)
    await env.fake.send_event(ev, event_id=eid, retry_attempt=2)
    await env.fake.wait_posts(1)
    await env.settle(eid)
    assert len(env.fake.posts) == 1 and env.adapter.duplicates == 2


@pytest.mark.parametrize("polite", [False, True], ids=["dropped", "disconnect-message"])
async def test_disconnect_mid_conversation_recovers_without_duplicates(env: Env,
                                                                       polite: bool) -> None:
    await env.fake.user_says(GENERAL, ANN, "assistant, first?")
    await env.fake.wait_posts(1)
    await env.settle()
    # This message's acknowledgement is lost with the connection: Slack redelivers it.
    env.fake.lose_acks = True
    eid = await env.fake.send_event(env.fake.message_event(GENERAL, BOB, "assistant, second?"))
    await env.fake.wait_posts(2)
    await env.fake.wait_for(lambda: len(env.fake.lost_acks) >= 1)
    env.fake.lose_acks = False
    await env.fake.disconnect(polite=polite)
    await env.fake.wait_connected(2, timeout=10)
    # Said while the bot was reconnecting: queued by Slack, delivered on the new connection.
    await env.fake.user_says(GENERAL, ANN, "assistant, third?")
    await env.fake.wait_posts(3, timeout=10)
    await env.settle(eid)
    assert env.texts() == ["echo: assistant, first?", "echo: assistant, second?",
                           "echo: assistant, third?"]
    retried = [e for e in env.fake.envelopes_sent if e["payload"]["event_id"] == eid]
    assert [e["retry_attempt"] for e in retried] == [0, 1]
    assert env.adapter.duplicates >= 1


async def test_huge_message_and_odd_unicode(env: Env) -> None:
    env.core.runtime = dataclasses.replace(env.core.runtime, max_message_chars=100_000)
    body = ("word " * 6000).strip()  # 29,999 characters
    huge = "assistant, " + body
    assert len(huge) > 30_000
    ts = await env.fake.user_says(GENERAL, ANN, huge)
    await env.fake.wait_posts(1)
    await env.settle()
    posts = env.fake.posts
    assert len(posts) == 8 and all(len(p["text"]) <= MAX_POST_CHARS for p in posts)
    assert {p["thread_ts"] for p in posts} == {ts}
    assert " ".join(p["text"] for p in posts) == "echo: " + huge
    odd = "assistant, مرحبا\u200b 👩\u200d💻 e\u0301 \u202edlrow\x00 &<>"
    await env.fake.user_says(GENERAL, BOB, odd)
    await env.fake.wait_posts(9)
    await env.settle()
    said = env.records[-1].messages[0].text
    assert said == odd.replace("\x00", "")
    assert posts[-1]["text"] == "echo: " + said.replace("&", "&amp;").replace(
        "<", "&lt;").replace(">", "&gt;")


async def test_edits_deletions_and_reactions_reach_the_core(env: Env) -> None:
    ts = await env.fake.user_says(GENERAL, ANN, "assistant, what is 429?")
    await env.fake.wait_posts(1)
    await env.settle()
    bot_ts = env.store.bot_turns[0][2]
    edit = {"type": "message", "subtype": "message_changed", "hidden": True,
            "channel": GENERAL, "ts": env.fake.next_ts(), "channel_type": "channel",
            "message": {"type": "message", "user": ANN, "text": "what is 503?", "ts": ts},
            "previous_message": {"type": "message", "user": ANN, "text": "what is 429?",
                                 "ts": ts}}
    delete = {"type": "message", "subtype": "message_deleted", "hidden": True,
              "channel": GENERAL, "ts": env.fake.next_ts(), "deleted_ts": ts,
              "channel_type": "channel",
              "previous_message": {"type": "message", "user": ANN, "text": "x", "ts": ts}}
    react = {"type": "reaction_added", "user": BOB, "reaction": "thumbsup",
             "item_user": "U0BOT", "item": {"type": "message", "channel": GENERAL,
                                            "ts": bot_ts}, "event_ts": env.fake.next_ts()}
    for ev in (edit, delete, react):
        await env.fake.send_event(ev)
    await env.settle()
    key = ConversationKey("slack", GENERAL)
    assert env.store.edits == [Edit(key, ts, ANN, "what is 503?", ts=env.store.edits[0].ts)]
    assert env.store.deletions == [Deletion(key, ts, ts=env.store.deletions[0].ts)]
    assert env.store.reactions == [Reaction(key, str(bot_ts), BOB, "thumbsup",
                                            ts=env.store.reactions[0].ts)]


@pytest.mark.parametrize(("channel", "method"), [("D0ANNDM", "chat.postMessage"),
                                                   (GENERAL, "chat.startStream")],
                         ids=["post", "stream"])
async def test_rate_limited_post_is_retried_by_the_sdk(env: Env, channel: str,
                                                       method: str) -> None:
    env.fake.rate_limit[method] = 1
    await env.fake.user_says(channel, ANN, "assistant, ping?")
    await env.fake.wait_posts(1, timeout=10)
    posted = [m for m, _ in env.fake.calls if m == method]
    assert len(posted) == 2 and len(env.fake.posts) == 1  # one 429, one success


async def test_bad_tokens_name_what_to_fix() -> None:
    async with FakeSlack() as fake:
        core, adapter, _ = await make_env(fake)
        adapter.client.token = "xoxb-wrong"
        with pytest.raises(AdapterError, match="SLACK_BOT_TOKEN"):
            await adapter.start()
        core2, adapter2, _ = await make_env(fake)
        adapter2._app_token = "xapp-wrong"
        with pytest.raises(AdapterError, match="SLACK_APP_TOKEN"):
            await adapter2.start()
        await adapter2.close()
        await core.close()
        await core2.close()


async def test_http_events_api_signed_retried_and_forged() -> None:
    async with FakeSlack(echo_own_messages=False) as fake:
        core, adapter, _ = await make_env(fake, mode="http", http_host="127.0.0.1",
                                            http_port=0, http_path="/slack/events")
        async with core, adapter:
            url = f"http://127.0.0.1:{adapter.http_port}/slack/events"
            status, body = await fake.deliver_http(url, {"type": "url_verification",
                                                         "challenge": "c-123",
                                                         "token": "t"})
            assert status == 200 and json.loads(body) == {"challenge": "c-123"}
            ev = fake.message_event(GENERAL, ANN, "assistant, over http?")
            payload = fake.callback_body(ev, "Ev0HTTP01")
            assert (await fake.deliver_http(url, payload))[0] == 200
            # Slack retries when the 200 came late: same event id, X-Slack-Retry-Num.
            assert (await fake.deliver_http(url, payload, retry_num=1))[0] == 200
            forged = fake.callback_body(fake.message_event(GENERAL, BOB, "assistant, hi"))
            assert (await fake.deliver_http(url, forged, secret="wrong"))[0] == 401
            stale = fake.callback_body(fake.message_event(GENERAL, BOB, "assistant, hi"))
            assert (await fake.deliver_http(url, stale, timestamp=1_000_000_000))[0] == 401
            await asyncio.wait_for(core.flush(), 5)
            assert [p["text"] for p in fake.posts] == ["echo: assistant, over http?"]
            assert adapter.duplicates == 1


async def test_retry_during_a_failing_first_delivery_is_not_lost() -> None:
    """Slack retries an event whose acknowledgement is late. If that retry arrives while the
    first delivery is still being handled and the first then fails (here: the store's disk
    write fails once), the retry must be handled, not acknowledged as a duplicate: Slack
    never sends an acknowledged event again."""

    class FailingOnceStore(RecordingStore):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        async def record_message(self, msg):  # type: ignore[no-untyped-def]
            self.calls += 1
            await asyncio.sleep(0.3)  # a slow disk: the retry arrives meanwhile
            if self.calls == 1:
                raise OSError("disk I/O error")
            return await super().record_message(msg)

    async with FakeSlack(echo_own_messages=False) as fake:
        core, adapter, _ = await make_env(fake, mode="http", http_host="127.0.0.1",
                                            http_port=0, http_path="/slack/events")
        store = core.store = FailingOnceStore()
        async with core, adapter:
            url = f"http://127.0.0.1:{adapter.http_port}/slack/events"
            payload = fake.callback_body(fake.message_event(GENERAL, ANN, "assistant, still?"),
                                         "Ev0FLAKY1")
            first = asyncio.create_task(fake.deliver_http(url, payload))
            await asyncio.sleep(0.1)
            retry = asyncio.create_task(fake.deliver_http(url, payload, retry_num=1))
            (s1, _), (s2, _) = await asyncio.wait_for(asyncio.gather(first, retry), 10)
            assert s1 != 200 and s2 == 200  # the failed one was not acknowledged
            await asyncio.wait_for(core.flush(), 5)
            assert [p["text"] for p in fake.posts] == ["echo: assistant, still?"]
            assert [m.text for m in store.messages] == ["assistant, still?"]
            assert adapter.duplicates == 0
