"""Who is addressing the bot, which mode a channel is in, thresholds and cooldowns.

How a message addresses the bot (`Policy.address`):
- "direct": a platform mention, or a wake word used as a vocative anywhere in the message
  ("assistant, ...", "ok so, assistant, ...", "quick one, assistant: ...", "..., assistant?",
  "助手帮我看下", "...行不行？助手你说说", "问问助手"). Always answered.
- "ambiguous": the wake word is there but the rules cannot tell ("wonder what assistant would
  say"): the model decides with the lenient `ambiguous_threshold`.
- "follow-up": the person the bot just answered speaks again, before anyone else did and
  within `follow_up_seconds`: decided like "ambiguous", never forced.
- None: not addressed; the word as a noun in passing ("my assistant manager", "assistant
  professor", "助手功能坏了"), in code or in quoted text never counts.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from bot.config import PolicySettings
from bot.message import ConversationKey, Message

MODES = ("mention", "semi-active", "always")

_GREETING = r"(?:hey|hi|hello|ok|okay|yo|oi|dear|please|so|well|and|but|嘿|喂|哈喽|你好|请问|请)"
_PUNCT = r"[,，:：;；!！?？。.、~\-—]"

# -- what counts as an address ---------------------------------------------------------------
# A wake word is an address (a vocative) when it calls the bot:
# - as a platform or @-mention: "@assistant ...";
# - where a clause starts (message start, after . ! ? , ; : or a dash), with nothing before it
#   in that clause but lead-in words ("ok so, hey ..."), and followed by the punctuation that
#   introduces the request ("assistant, ...", "quick one for you, assistant: ...") or by a
#   request ("assistant what's ...", "assistant can you ...", "助手帮我看下", "助手你说说");
# - at the end, set off by punctuation ("..., assistant?", "...对吧，助手？"), or ending a
#   question ("what's the capital of Peru assistant?"), or after thanks ("thanks assistant!");
# - in Chinese after a verb of asking ("问问助手", "问下助手：...").
# It is not one as a noun: after a determiner or possessive ("my assistant manager", "the
# assistant was wrong", "我的助手"), before a noun it qualifies ("assistant professor",
# "助手功能坏了"), inside a word ("assistants", "AI助手"), in code or quoted text. Anything else
# with the word in it is "ambiguous": the model decides, leniently.
_LEAD = (r"(?:he+y+|hi+|hel+o+|greetings|ok|okay|yo|oi|dear|please|pls|so|well|and|but|also|"
         r"oh|now|then|"
         r"right|alright|yeah|yes|yep|no|nah|um|umm|uh|hmm|btw|anyway|lol|sorry|excuse me|"
         r"good morning|morning|good afternoon|afternoon|good evening|evening|gm|sup|"
         r"嘿|喂|哈喽|你好|请问|请|那|那么|好|好的|对了|哎|诶|欸|嗯|话说|麻烦|早|早上好)")
_LEADS = rf"^\s*(?:{_LEAD}(?![\w'’])\s*[,，]?\s*)*$"  # what may stand before a vocative
_GREETS = (r"(?<![\w'’])(?:he+y+|hi+|hel+o+|greetings|yo|oi|dear|good morning|morning|"
           r"good afternoon|afternoon|good evening|evening|gm|sup|please|pls|"
           r"(?:thanks|thank you|thx|ty)(?: in advance| a lot| so much)?|cheers|"
           r"嘿|喂|哈喽|你好|谢谢|多谢|谢了|早|早上好)\s*[,，]?\s*$")
# Clause boundaries: what may start the clause a vocative stands in.
_BOUNDARY = r"[.!?。！？…,，;；:：\n—–(（]|\s-\s"
_PRONOUN = r"(?:it|there|this|that|you|u|ya|we|i|he|she|they|anyone|anybody|someone|everyone)"
# Right after the wake word: the request itself ("assistant what's ...", "助手帮我看下").
_REQUEST = (r"(?:(?:what|what's|whats|how|how's|why|when|where|who|who's|which|whose|please|"
            r"pls|tell|give|show|help|translate|convert|summari[sz]e|remind|explain|find|check|"
            r"list|write|calculate|compute|define|look|describe|recommend|suggest|compare|"
            r"draft|post|pick|choose|make|set|create|add|remove|run|open|send|book|schedule|"
            r"plan|outline|generate|fix|review|rewrite|rephrase|shorten|proofread|count|sort|"
            r"search|google|fetch|get|grab|roll|flip|decide|name|rate|rank|guess|say|repeat|"
            r"spell|read|teach|quiz|remember|answer|reply|estimate|predict|solve|simplify|"
            r"format|debug|recap|tldr|eli5|settle|break|walk|go|keep|try|share|link|cite|"
            r"you|you're|youre|u|i|i'm|we|quick|any|any1|thanks|thank|"
            r"are\s+you|r\s+u)(?![\w'’])|"
            r"(?:is|are|was|were|do|does|did|can|could|would|will|should|shall|have|has|"
            r"didn't|doesn't|isn't|wasn't|aren't|won't|can't|couldn't|wouldn't|shouldn't)"
            rf"\s+{_PRONOUN}(?![\w'’])|"
            r"and\s.*[?？]\s*$|"  # "assistant and the integral of 1/x?"
            r"帮|请|给我|你|您|能不能|能否|能|可以|可不可以|说说|说一下|说下|查|算一下|算下|"
            r"告诉|翻译|解释|看看|看下|看一下|在吗|在不在|知道|怎么|什么|多少|几|是不是|"
            r"有没有|总结|推荐|写|提醒|来(?=\S)|那(?![个些边里样么]))")
# After a Chinese wake word, wherever it stands: calling it, not naming it ("行不行助手你说说").
_CALL_ZH = r"(?:你|您|帮我|帮忙|给我|请)"
_ASK_ZH = r"(?:问下|问一下|问问|请教|召唤|叫一下|问)"
# Before the word: it is a noun there ("my assistant", "the assistant", "Home Assistant").
_DETERMINER = (r"(?:a|an|the|my|our|your|his|her|their|its|this|that|these|those|every|each|"
               r"no|some|one|new|old|former|virtual|personal|teaching|research|executive|"
               r"administrative|admin|google|home|ai|voice|smart|digital|shopping|legal|"
               r"medical|dental|lab|pr|coding|code|chat|kitchen|store|office|sales|marketing|"
               r"editorial|production|senior|junior|head|chief|graduate|grad|lead|best|good|"
               r"great|useful|stupid|dumb|of|for|about|with|without|by|than|like|as|an?other|"
               r"which|whose)")
# Before the word: talk about asking it, not asking it ("maybe ask assistant").
_ABOUT_ASKING = r"(?:ask|asked|asking|ping|pinged|cc|tag|tagged|call|called|summon|to|at)"
# After the word: a noun it qualifies ("assistant professor", "助手功能坏了").
_QUALIFIED = (r"(?:managers?|professors?|coach(?:es)?|editors?|directors?|principals?|"
              r"secretar(?:y|ies)|roles?|positions?|jobs?|titles?|bots?|apps?|features?|"
              r"plugins?|modes?|apis?|modules?|engineers?|producers?|referees?|teachers?|"
              r"researchers?|project|ta|tas|pm|pms|dean|deans|chef|curators?|"
              r"'s|’s|is\s+(?:down|broken|dead|wrong|slow|offline|back|up|great|good|bad|"
              r"useless|helpful|working|fixed))(?![\w'’])|"
              r"功能|插件|模式|这个词|的|们|工具|机器人|软件|程序|系统|坏了|挂了|不行了|好用|挺")
_ZH_NOUN_BEFORE = "的个位款种名音能型用"  # 我的助手, 语音助手, 智能助手 ...
_ZH_NOT_WORD = ("帮借辅求协援互扶", "册机段表术续工臂指套环势法腕脚掌心印")  # 帮助手册, 借助手机
_QUESTION = (r"(?:^|[.!?。！？]\s*)(?:what|what's|whats|how|why|when|where|who|which|whose|"
             r"can|could|would|will|should|do|does|did|is|are|was|were|any|anyone|have|has|"
             r"tell|know)\b|[?？]|[吗呢么]\s*$")
_EMOJI = r"[\U0001F000-\U0001FFFF\u2600-\u27BF\uFE0F\u200d]"

_FENCE = re.compile(r"```.*?(?:```|$)", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_QUOTE_LINE = re.compile(r"^[ \t]*(?:>|&gt;).*$", re.MULTILINE)
_QUOTED = re.compile(r"\"[^\"\n]{0,300}\"|“[^”\n]{0,300}”|「[^」\n]{0,300}」|『[^』\n]{0,300}』|"
                     r"(?<![\w'’])'[^'\n]{0,80}'(?![\w'’])|‘[^’\n]{0,300}’")
_HOLE = " \u2022 "  # stands where code or a quotation was: neither a word nor a boundary

Address = str  # "direct" | "ambiguous" | "follow-up"


def _spoken(text: str) -> str:
    """The text a person said themselves: code, quoted lines and quotations left out."""
    for rx in (_FENCE, _INLINE_CODE, _QUOTE_LINE, _QUOTED):
        text = rx.sub(_HOLE, text)
    return text


class _Word:
    """One wake word's rules (see the comment above), compiled once."""

    def __init__(self, word: str):
        self.cjk = bool(re.search(r"[\u3000-\u9fff\uac00-\ud7af]", word))
        w = re.escape(word)
        b0, b1 = ("", "") if self.cjk else (r"(?<![\w@])", r"(?![\w'’-])")
        i = re.IGNORECASE
        # group 1: the "@" of an @-mention written as text
        self.occ = re.compile(rf"(?:(?<!\w)(@)|{b0}){w}{b1}", i)
        self.leads = re.compile(_LEADS, i)
        self.greets = re.compile(_GREETS, i)
        self.emoji = re.compile(rf"^(?:\s|{_EMOJI})+")
        self.request = re.compile(rf"\s*[,，:：]?\s*{_REQUEST}", i)
        self.punct = re.compile(r"\s*(?:[,，:：!！?？;；—–~～]|\s-\s|[.。…]+\s*\S)", i)
        self.comma_request = re.compile(rf"\s*[,，:：]\s*{_REQUEST}", i)
        self.at_end = re.compile(r"\s*[?？!！.。~…吗呢吧啊呀]*\s*$" if self.cjk
                                 else r"\s*[?？!！.。~…]*\s*$")
        self.det = re.compile(rf"(?<![\w'’]){_DETERMINER}\s*$", i)
        self.about_asking = re.compile(rf"(?<![\w'’]){_ABOUT_ASKING}\s*$", i)
        self.set_off = re.compile(r"[,，:：;；—–]\s*$")
        self.ask_zh = re.compile(rf"(?:^|[\s,，.。!！?？:：;；]|{_LEAD}|想|我|我想|我要){_ASK_ZH}\s*$", i)
        self.call_zh = re.compile(rf"\s*{_CALL_ZH}")
        self.asks_zh = re.compile(r"\s*[^.!?。！？\n]*[\u3400-\u9fff][^.!?。！？\n]*"
                                  r"(?:[?？]|吗|呢|怎么样|多少|几点|什么)\s*[?？]*\s*$")
        self.qualified = re.compile(rf"\s*(?:{_QUALIFIED})", i)
        self.question = re.compile(_QUESTION, i)

    def classify(self, text: str) -> str | None:
        """"direct", "ambiguous" or None, over every occurrence of the word in `text`."""
        found: str | None = None
        for m in self.occ.finditer(text):
            kind = self._one(text, m.start(), m.end(), mention=bool(m.group(1)))
            if kind == "direct":
                return kind
            found = found or kind
        return found

    def _one(self, text: str, start: int, end: int, mention: bool) -> str | None:
        if mention and (start == 0 or not text[start - 1].isalnum()):
            return "direct"
        before, after = text[:start], self.emoji.sub(" ", text[end:])
        prev = before[-1:] or "^"
        if self.cjk:
            if prev in _ZH_NOT_WORD[0] or (after[:1] or "$") in _ZH_NOT_WORD[1]:
                return None  # 帮助手册: not the word at all
            if prev in _ZH_NOUN_BEFORE or re.match(r"[A-Za-z0-9]", prev):
                return None  # 我的助手, AI助手
        if self.det.search(before) or self.qualified.match(after):
            return None  # a noun: "my assistant", "assistant professor"
        cut = 0
        for b in re.finditer(_BOUNDARY, before):
            cut = b.end()
        at_end = bool(self.at_end.match(after))
        if self.leads.match(before[cut:]):  # where its clause starts
            if self.request.match(after) or (self.punct.match(after) and not at_end):
                return "direct"  # "assistant, ..." / "ok so, assistant what's ..."
            if self.asks_zh.match(after):
                return "direct"  # a Chinese question right after the name
            if at_end and (self.greets.search(before) or self.set_off.search(before)):
                return "direct"  # "hey assistant!", "..., assistant?"
            if at_end and self.leads.match(before):
                return "ambiguous"  # the name on its own: "assistant?" may call it
        if self.comma_request.match(after):
            return "direct"  # "sorry if this is dumb but assistant, what's a monad"
        if at_end and before.strip():
            if self.set_off.search(before) or self.greets.search(before):
                return "direct"  # "..., assistant?" / "thanks assistant!"
            if self.cjk and re.search(r"[?？!！。～~吧呢吗啊呀嘛哈]\s*$", before):
                return "direct"  # "到底行不行？助手"
            if not self.cjk and self.question.search(before) and \
                    not self.about_asking.search(before):
                return "direct"  # "who won the world cup in 2010 assistant"
        if self.cjk:
            if self.ask_zh.search(before):  # "问问助手：..." asks; "问问助手吧" suggests
                return "direct" if re.match(r"\s*[,，:：]?\s*\S", after) and not at_end \
                    else "ambiguous"
            if self.call_zh.match(after):
                return "direct"  # "……行不行 助手你说说"
            if re.match(r"[\u3400-\u9fff]", prev):
                return None  # part of a compound: 行政助手, 研究助手
        return "ambiguous"


class Addressing:
    """Decides whether, and how, a message addresses the bot (see the rules above)."""

    def __init__(self, wake_words: Iterable[str]):
        words = sorted({w.strip() for w in wake_words if w and w.strip()}, key=len, reverse=True)
        self.wake_words = words
        self._words = [_Word(w) for w in words]
        alts = "|".join(re.escape(w) for w in words)
        self._leading = re.compile(rf"^\s*@?(?:{alts})(?![\w'’-])", re.IGNORECASE) \
            if words else None

    def classify(self, text: str, mentions_bot: bool = False) -> str | None:
        """"direct" (always answered), "ambiguous" (the model decides, leniently) or None."""
        if mentions_bot:
            return "direct"
        # An address is at the start or the end: never scan megabytes.
        parts = [text] if len(text) <= 2300 else [text[:2000], text[-300:]]
        found: str | None = None
        for part in parts:
            spoken = _spoken(part)
            for w in self._words:
                kind = w.classify(spoken)
                if kind == "direct":
                    return kind
                found = found or kind
        return found

    def is_addressed(self, text: str, mentions_bot: bool = False) -> bool:
        return self.classify(text, mentions_bot) == "direct"

    def leads_with_wake_word(self, text: str) -> bool:
        """The message starts with a wake word ("assistant optin"), address or not: where the
        rest is exactly a command, it is one (the command parser decides)."""
        return bool(self._leading and self._leading.match(text))

    def strip_address(self, text: str) -> str:
        """The message without its leading address: "assistant, optin" -> "optin"."""
        for w in self.wake_words:
            m = re.match(rf"^\s*(?:{_GREETING}\s*[,，]?\s*)?@?{re.escape(w)}\s*{_PUNCT}?\s*",
                         text, re.IGNORECASE)
            if m:
                return text[m.end():].strip()
        return text.strip()


@dataclass
class ChannelState:
    mode: str | None = None
    threshold: float | None = None


class Policy:
    """Channel modes, thresholds and the chime-in cooldown, from config plus admin changes."""

    def __init__(self, settings: PolicySettings, wake_words: Iterable[str],
                 clock: Callable[[], float] | None = None):
        self.settings = settings
        self.addressing = Addressing(wake_words)
        self._overrides: dict[str, ChannelState] = defaultdict(ChannelState)
        self._chimeins: dict[str, deque[float]] = defaultdict(deque)
        self._clock: Callable[[], float] = clock or time.monotonic
        # conversation -> (author answered, when): who may follow up without the name
        self._answered: dict[ConversationKey, tuple[str, float]] = {}
        self._max_followups = 10_000

    @staticmethod
    def channel_id(key: ConversationKey) -> str:
        return f"{key.platform}:{key.channel}"

    def set_channel(self, key: ConversationKey, *, mode: str | None = None,
                    threshold: float | None = None) -> None:
        """An admin's runtime change (mode / threshold) for a channel and its threads."""
        st = self._overrides[self.channel_id(key)]
        if mode is not None:
            if mode not in MODES:
                raise ValueError(f"mode must be one of {', '.join(MODES)}")
            st.mode = mode
        if threshold is not None:
            if not 0.0 <= threshold <= 1.0:
                raise ValueError("threshold must be between 0 and 1")
            st.threshold = threshold

    def mode(self, key: ConversationKey, is_dm: bool = False) -> str:
        cid = self.channel_id(key)
        over = self._overrides.get(cid)
        if over and over.mode:
            return over.mode
        conf = self.settings.channels.get(cid)
        if conf and conf.mode:
            return conf.mode
        return self.settings.dm_mode if is_dm else self.settings.mode

    def threshold(self, key: ConversationKey) -> float:
        cid = self.channel_id(key)
        over = self._overrides.get(cid)
        if over and over.threshold is not None:
            return over.threshold
        conf = self.settings.channels.get(cid)
        if conf and conf.threshold is not None:
            return conf.threshold
        return self.settings.threshold

    def ambiguous_threshold(self, key: ConversationKey) -> float:
        """The lenient threshold for "ambiguous" and "follow-up" messages (per channel)."""
        conf = self.settings.channels.get(self.channel_id(key))
        if conf and conf.ambiguous_threshold is not None:
            return conf.ambiguous_threshold
        return self.settings.ambiguous_threshold

    def is_addressed(self, msg: Message) -> bool:
        return self.addressing.is_addressed(msg.text, msg.mentions_bot)

    # -- how a message addresses the bot -------------------------------------------------
    def address(self, msg: Message) -> Address | None:
        """"direct", "ambiguous", "follow-up" or None for a human's message. Call
        `note_message` after it, in arrival order, so follow-ups are judged in context."""
        kind = self.addressing.classify(msg.text, msg.mentions_bot)
        if kind == "direct":
            return kind
        last = self._answered.get(msg.key)
        if (last is not None and last[0] == msg.author_id
                and msg.ts - last[1] <= self.settings.follow_up_seconds):
            return "follow-up"
        return kind

    def note_message(self, msg: Message) -> None:
        """A human spoke: the chance of a follow-up to the bot's last answer is over (the
        asker's own next message has been judged by now; anyone else's moves the
        conversation on)."""
        self._answered.pop(msg.key, None)

    def note_answered(self, msg: Message, at: float | None = None) -> None:
        """The bot answered `msg`: its author's next message may be a follow-up. Where the
        answer went into a new thread under the message (Slack), the follow-up may come in
        that thread, which is its own conversation."""
        at = time.time() if at is None else at
        self._answered[msg.key] = (msg.author_id, at)
        if msg.key.thread is None and msg.message_id:
            self._answered[replace(msg.key, thread=msg.message_id)] = (msg.author_id, at)
        while len(self._answered) > self._max_followups:  # bounded: oldest first
            self._answered.pop(next(iter(self._answered)))

    # -- cooldown on unprompted chime-ins ------------------------------------------------
    def allow_chimein(self, key: ConversationKey) -> bool:
        cap = self.settings.cooldown_max_chimeins
        window = self.settings.cooldown_window_seconds
        if window <= 0:
            return True
        q = self._chimeins[self.channel_id(key)]
        now = self._clock()
        while q and now - q[0] > window:
            q.popleft()
        return len(q) < cap

    def record_chimein(self, key: ConversationKey) -> None:
        self._chimeins[self.channel_id(key)].append(self._clock())
