"""Answers on Slack as they are written (`SlackAdapter.open_stream`).

- In a thread (the normal reply to a mention) the answer uses Slack's native stream:
  `chat.startStream` with the first text, `chat.appendStream` with what is new, and
  `chat.stopStream` with the rest (Markdown, `markdown_text`). The stream is addressed to the
  person asked (`recipient_user_id`, `recipient_team_id`), as Slack requires of bot tokens.
- Elsewhere (a channel or DM outside a thread), or where Slack refuses the native stream (an
  app without it, a workspace or an older Enterprise Grid that does not offer it, a channel type
  it does not support), the answer is posted with `chat.postMessage` and edited with
  `chat.update` (adapters.streaming.EditedStream): `text`, like a whole post. A refusal is
  remembered (`NativeSupport`): for the whole workspace where the method itself is unavailable,
  for the channel where only that channel refuses it; the answer that met it goes on by
  post + edit without showing anything twice.
- Both respect the 4,000-character split of a whole post: the text is split exactly as `send`
  splits it, and a stream that outgrows one message continues in the next (a stream is stopped
  and, where it already showed more than its part, cut back to it with `chat.update`).
- Text is escaped the same way everywhere (`slack_escape`: `&`, `<`, `>`), so model output can
  never ping `<!channel>`; escaping is per character, so the escaped deltas of a stream add up
  to the escaped whole.
- Failure: `update` may raise (the core then stops updating). `finish` still ends with the
  final parts, each shown once: a stream that cannot be stopped or appended to is rewritten
  with `chat.update`, or deleted and posted anew where that fails too. `abort` replaces the
  partial answer by the apology (or deletes it) and never raises.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.streaming import EditedStream

log = logging.getLogger(__name__)

# The app or the workspace cannot stream (no such method for it, an older Enterprise Grid, a
# token or scope that does not allow it): never asked again while the adapter runs.
REFUSED_EVERYWHERE = frozenset({
    "unknown_method", "method_not_supported", "method_deprecated", "not_allowed_token_type",
    "missing_scope", "no_permission", "enterprise_is_restricted", "team_access_not_granted",
    "feature_not_enabled", "not_enabled"})
# This channel does not take streams (a channel type, a channel's restrictions).
REFUSED_HERE = frozenset({"channel_type_not_supported", "not_allowed", "restricted_action"})


class NativeSupport:
    """Where Slack's native stream may be tried (one workspace per bot token)."""

    def __init__(self) -> None:
        self.everywhere = True
        self.off: set[str] = set()  # channels that refused it

    def allowed(self, channel: str) -> bool:
        return self.everywhere and channel not in self.off

    def refused(self, channel: str, error: str | None) -> None:
        if error in REFUSED_EVERYWHERE:
            if self.everywhere:
                log.info("slack: no native streaming for this app (%s); answers are posted "
                         "and edited instead", error)
            self.everywhere = False
        elif error in REFUSED_HERE:
            log.info("slack: no native streaming in %s (%s); posting and editing there",
                     channel, error)
            self.off.add(channel)


def _error(e: BaseException) -> str | None:
    if isinstance(e, SlackApiError):
        err = e.response.get("error")
        return err if isinstance(err, str) else None
    return None


@dataclass
class _Segment:
    """One streamed message: its ts, what it shows, and whether its stream is still open."""

    ts: str
    text: str
    open: bool = True


class SlackMessages:
    """One answer's plain messages (adapters.streaming.Messages): chat.postMessage, chat.update,
    chat.delete, in the answer's thread if it has one. `markdown` sends `markdown_text` instead
    of `text` (a streamed answer's messages are Markdown)."""

    def __init__(self, client: AsyncWebClient, channel: str, thread_ts: str | None, *,
                 escape: Callable[[str], str], posted: Callable[[str, str], None],
                 deleted: Callable[[str], object], markdown: bool = False):
        self.client = client
        self.channel = channel
        self.thread_ts = thread_ts
        self.escape = escape
        self.posted = posted  # (ts, text): the adapter remembers its own messages
        self.deleted = deleted  # ts: a message the bot took down itself
        self._field = "markdown_text" if markdown else "text"

    async def post(self, text: str, first: bool = False) -> str:
        kwargs: dict[str, Any] = {"channel": self.channel, self._field: self.escape(text),
                                  "unfurl_links": False, "unfurl_media": False}
        if self.thread_ts:
            kwargs["thread_ts"] = self.thread_ts
        try:
            resp = await self.client.chat_postMessage(**kwargs)
        except SlackApiError as e:
            log.error("slack: could not post to %s: %s", self.channel, _error(e))
            raise
        ts = str(resp["ts"])
        self.posted(ts, text)
        return ts

    async def edit(self, message_id: str, text: str) -> None:
        if self._field == "markdown_text":
            await self.client.chat_update(channel=self.channel, ts=message_id,
                                          markdown_text=self.escape(text))
        else:
            await self.client.chat_update(channel=self.channel, ts=message_id,
                                          text=self.escape(text))
        self.posted(message_id, text)

    async def delete(self, message_id: str) -> None:
        self.deleted(message_id)  # its message_deleted event is no news
        await self.client.chat_delete(channel=self.channel, ts=message_id)


class SlackStream:
    """One answer on Slack as it is written (bot.stream.ReplyStream; the module docstring)."""

    def __init__(self, plain: SlackMessages, *, split: Callable[[str], list[str]],
                 recipient: tuple[str, str] | None, support: NativeSupport):
        self._plain = plain
        self._client = plain.client
        self._channel = plain.channel
        self._escape = plain.escape
        self._split = split
        self._recipient = recipient
        self._support = support
        self.native = (plain.thread_ts is not None and recipient is not None
                       and support.allowed(plain.channel))
        self._segments: list[_Segment] = []
        self._edited = EditedStream(plain, split)

    # -- ReplyStream ----------------------------------------------------------------------
    async def update(self, text: str) -> None:
        if self.native:
            try:
                await self._stream(self._split(text), final=False)
                return
            except Exception as e:
                if self._segments:
                    raise  # mid-stream: the core stops updating, finish() repairs
                self._fall_back(e)
        await self._edited.update(text)

    async def finish(self, text: str) -> str | None:
        parts = self._split(text)
        if self.native:
            try:
                await self._stream(parts, final=True)
            except Exception as e:  # noqa: BLE001 - repaired, or fallen back, below
                if self._segments:
                    log.warning("slack: a streamed answer could not be finished (%s); "
                                "rewriting it", _error(e) or e)
                    await self._repair(parts)
                else:
                    self._fall_back(e)
            if self.native:
                return self._segments[0].ts if self._segments else None
        return await self._edited.finish(text)

    async def abort(self, text: str | None) -> None:
        if not self._segments:
            await self._edited.abort(text)
            return
        try:
            await self._repair(self._split(text) if text else [])
        except Exception:  # the core is already handling a failure: log, never raise
            log.exception("slack: taking a broken-off answer down failed")

    # -- the native stream ----------------------------------------------------------------
    def _fall_back(self, e: BaseException) -> None:
        """The stream could not start, so nothing was shown: this answer (and, where Slack
        says streaming is not available, every later one there) is posted and edited."""
        error = _error(e)
        log.info("slack: native stream unavailable in %s (%s); posting and editing instead",
                 self._channel, error or repr(e))
        self.native = False
        self._support.refused(self._channel, error)

    async def _stream(self, parts: list[str], *, final: bool) -> None:
        """Show `parts`: a part followed by another (or any part, when `final`) is complete
        and its stream is stopped; the last part of a partial answer stays open."""
        for i, part in enumerate(parts):
            complete = final or i < len(parts) - 1
            if i < len(self._segments):
                seg = self._segments[i]
                if seg.open:
                    await self._advance(seg, part, complete)
                continue
            seg = await self._start(part)
            if complete:
                await self._advance(seg, part, True)

    async def _start(self, text: str) -> _Segment:
        assert self._recipient is not None and self._plain.thread_ts is not None  # native
        user, team = self._recipient
        resp = await self._client.chat_startStream(
            channel=self._channel, thread_ts=self._plain.thread_ts,
            markdown_text=self._escape(text), recipient_user_id=user, recipient_team_id=team)
        seg = _Segment(str(resp["ts"]), text)
        self._segments.append(seg)
        self._plain.posted(seg.ts, text)
        return seg

    async def _advance(self, seg: _Segment, part: str, complete: bool) -> None:
        """Bring one open stream to `part`: append what is new; when `complete`, stop it (and
        where it showed more than its part, cut it back with chat.update)."""
        if part.startswith(seg.text):
            more = self._escape(part[len(seg.text):])
            if complete:
                await self._client.chat_stopStream(channel=self._channel, ts=seg.ts,
                                                   markdown_text=more or None)
                seg.open = False
            elif more:
                await self._client.chat_appendStream(channel=self._channel, ts=seg.ts,
                                                     markdown_text=more)
            seg.text = part
        elif complete:  # the split fell before the end of what was shown
            await self._client.chat_stopStream(channel=self._channel, ts=seg.ts)
            seg.open = False
            await self._client.chat_update(channel=self._channel, ts=seg.ts,
                                           markdown_text=self._escape(part))
            seg.text = part
        self._plain.posted(seg.ts, seg.text)

    async def _repair(self, parts: list[str]) -> None:
        """After a failed call: the messages become exactly `parts`. Each streamed message is
        stopped (as far as Slack still lets us) and rewritten with chat.update where it is not
        right; from the first one that cannot be rewritten on, the messages are deleted and
        the rest posted anew. Raises only if posting anew fails."""
        i = 0
        while i < len(self._segments) and i < len(parts):
            seg = self._segments[i]
            if seg.open:
                with contextlib.suppress(Exception):  # e.g. it expired: no longer streaming
                    await self._client.chat_stopStream(channel=self._channel, ts=seg.ts)
                seg.open = False
            if seg.text != parts[i]:
                try:
                    await self._client.chat_update(channel=self._channel, ts=seg.ts,
                                                   markdown_text=self._escape(parts[i]))
                except Exception as e:  # noqa: BLE001 - deleted and posted anew below
                    log.info("slack: could not rewrite a streamed message (%s)",
                             _error(e) or e)
                    break
                seg.text = parts[i]
                self._plain.posted(seg.ts, seg.text)
            i += 1
        for seg in reversed(self._segments[i:]):
            if seg.open:
                with contextlib.suppress(Exception):
                    await self._client.chat_stopStream(channel=self._channel, ts=seg.ts)
            with contextlib.suppress(Exception):
                await self._plain.delete(seg.ts)
        del self._segments[i:]
        markdown = SlackMessages(self._client, self._channel, self._plain.thread_ts,
                                 escape=self._escape, posted=self._plain.posted,
                                 deleted=self._plain.deleted, markdown=True)
        for part in parts[i:]:
            ts = await markdown.post(part)
            self._segments.append(_Segment(ts, part, open=False))
