"""The OpenAI-compatible backend: vLLM, llama.cpp's server, or any /v1/completions server.

Rendering stays local (the model's own tokenizer and chat template through bot.render), so the
server sees exactly the tokens training used. The prompt is sent as token ids.

- decide: the conversation + assistant header + `(silence)` is sent with `echo` and
  `logprobs`; the sum of the marker tokens' log-probabilities is log p_silence (the whole
  marker, as in the local engine). The server's prefix cache (vLLM
  `--enable-prefix-caching`) makes the history cheap, as the local KV cache does. A server
  that does not echo prompt logprobs is asked for the first generated token's top logprobs
  instead, and p_silence is the probability of the marker's first token (logged once).
- respond: the header + forced `(response)` prompt, sampled until an end-of-turn token.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from bot.config import GenerationSettings, ModelSettings, OpenAISettings
from bot.engine.base import EngineError, hub_offline
from bot.engine.decision import DecisionEngine, Scored
from bot.message import Turn
from bot.render import DecisionInput, Renderer
from bot.sessions import Session

log = logging.getLogger(__name__)


class OpenAIServer:
    """The decision backend that asks an OpenAI-compatible completions server."""

    def __init__(self, tokenizer: Any, renderer: Renderer, api: OpenAISettings, *,
                 generation: GenerationSettings, client: Any = None):
        import httpx

        self.tokenizer = tokenizer
        self.renderer = renderer
        self.api = api
        self.gen = generation
        key = os.environ.get(api.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # One pooled client shared by the inference threads: up to max_concurrency requests
        # in flight, connections kept alive between them.
        limits = httpx.Limits(max_connections=api.max_concurrency,
                              max_keepalive_connections=api.max_concurrency)
        self.client = client or httpx.Client(base_url=api.base_url.rstrip("/") + "/",
                                             headers=headers, timeout=api.timeout_seconds,
                                             limits=limits)
        self.retry_base = 0.5  # seconds before the first retry (doubling, with jitter)
        self._echo = True
        self._eot_text = [tokenizer.decode([i]) for i in renderer.end_of_turn_ids]

    def check_server(self) -> None:
        """Fail at start-up, not on every message, when the server cannot be reached. Any
        HTTP answer counts as reachable (not every server has GET /models)."""
        import httpx

        try:
            self.client.get("models")
        except httpx.HTTPError as e:
            raise EngineError(f"cannot reach the model server at {self.api.base_url} ({e}): "
                              "start it, or set [openai] base_url") from e

    # -- HTTP ------------------------------------------------------------------------------
    def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /completions; 429, 5xx and connection errors are retried up to
        `max_retries` times with exponential backoff (Retry-After when the server sends
        one); anything else is an EngineError at once."""
        import httpx

        body = {"model": self.api.model, **body}
        for attempt in range(self.api.max_retries + 1):
            last = attempt == self.api.max_retries
            try:
                r = self.client.post("completions", json=body)
            except httpx.HTTPError as e:
                if last:
                    raise EngineError(f"cannot reach the model server at "
                                      f"{self.api.base_url}: {e}") from e
                self._backoff(attempt, None, str(e))
                continue
            if r.status_code == 429 or r.status_code >= 500:
                if last:
                    raise EngineError(f"model server answered {r.status_code} "
                                      f"{self.api.max_retries + 1} times: {r.text[:300]}")
                self._backoff(attempt, r.headers.get("retry-after"), str(r.status_code))
                continue
            if r.status_code >= 400:
                raise EngineError(f"model server answered {r.status_code}: {r.text[:300]}")
            data: dict[str, Any] = r.json()
            if not data.get("choices"):
                raise EngineError(f"model server sent no choices: {str(data)[:300]}")
            return data
        raise AssertionError("unreachable")  # the loop returns or raises

    def _backoff(self, attempt: int, retry_after: str | None, why: str) -> None:
        delay = self.retry_base * 2 ** attempt * (0.5 + random.random())
        if retry_after:
            with contextlib.suppress(ValueError):
                delay = min(float(retry_after), 60.0)
        log.warning("model server: %s; retry %d of %d in %.2f s", why, attempt + 1,
                    self.api.max_retries, delay)
        time.sleep(delay)

    # -- the decision backend -------------------------------------------------------------
    def score(self, session: Session, d: DecisionInput | None,
              turns: Sequence[Turn]) -> Scored:
        assert d is not None  # this backend renders: the engine always passes the input
        return Scored(self._p_silence(d), len(d.ids))

    def _p_silence(self, d: DecisionInput) -> float:
        if self._echo:
            data = self._complete({"prompt": d.ids, "max_tokens": 1, "echo": True,
                                   "logprobs": 1, "temperature": 0.0})
            lp = (data["choices"][0].get("logprobs") or {}).get("token_logprobs")
            if lp and len(lp) >= len(d.ids):
                marker = lp[d.marker_start:len(d.ids)]
                if all(x is not None for x in marker):
                    return math.exp(sum(marker))
            log.warning("the model server does not return prompt logprobs (echo): falling "
                        "back to the first marker token's probability")
            self._echo = False
        data = self._complete({"prompt": d.ids[: d.marker_start], "max_tokens": 1,
                               "logprobs": 20, "temperature": 0.0})
        top = ((data["choices"][0].get("logprobs") or {}).get("top_logprobs") or [{}])[0] or {}
        first = self.tokenizer.decode([d.ids[d.marker_start]])
        return math.exp(top[first]) if first in top else 0.0

    def prefill(self, session: Session, ids: list[int], budget: int) -> bool:
        return False  # no local cache to fill

    def generate(self, session: Session, d: DecisionInput | None, turns: Sequence[Turn],
                 on_text: Callable[[str], None] | None) -> str:
        assert d is not None
        body: dict[str, Any] = {
            "prompt": d.ids[: d.marker_start] + d.response_ids,
            "max_tokens": self.gen.max_new_tokens, "temperature": self.gen.temperature,
            "top_p": self.gen.top_p, "stop": self._eot_text,
            # vLLM extensions: stop on the template's end-of-turn ids; no empty answer
            "stop_token_ids": self.renderer.end_of_turn_ids, "min_tokens": 1,
        }
        if self.gen.top_k:
            body["top_k"] = self.gen.top_k
        if self.gen.seed is not None:
            body["seed"] = self.gen.seed
        data = self._complete(body)
        text = str(data["choices"][0].get("text") or "")
        if on_text is not None:
            on_text(text)
        session.ids = session.ids[: d.marker_start]
        return text

    def close(self) -> None:
        self.client.close()


class OpenAIEngine(DecisionEngine):
    """The decision skeleton over an OpenAI-compatible server (OpenAIServer)."""

    def __init__(self, tokenizer: Any, api: OpenAISettings, *, generation: GenerationSettings,
                 max_context_tokens: int = 2048, trim_to: float = 0.45, system_prompt: str = "",
                 fallback_answer: str = "", version: str | None = None, client: Any = None):
        renderer = Renderer(tokenizer, system_prompt)
        self.server = OpenAIServer(tokenizer, renderer, api, generation=generation,
                                   client=client)
        super().__init__(self.server, renderer, version=version or f"openai:{api.model}",
                         max_context_tokens=max_context_tokens,
                         max_new_tokens=generation.max_new_tokens, trim_to=trim_to,
                         fallback_answer=fallback_answer)
        self.tokenizer = tokenizer
        # A server serves many conversations at once: the core decides different
        # conversations concurrently, up to this many (each one's messages stay in order).
        self.max_concurrency = api.max_concurrency

    @classmethod
    def from_settings(cls, model: ModelSettings, api: OpenAISettings,
                      generation: GenerationSettings, *, system_prompt: str = "",
                      fallback_answer: str = "") -> OpenAIEngine:
        from transformers import AutoTokenizer

        source = model.path or api.model
        try:
            tok = AutoTokenizer.from_pretrained(
                source, local_files_only=hub_offline())
        except OSError as e:
            raise EngineError(f"the openai backend renders prompts locally and needs the "
                              f"served model's tokenizer: cannot load {source!r} ({e})"
                              .split("\n")[0]) from e
        engine = cls(tok, api, generation=generation,
                     max_context_tokens=model.max_context_tokens, trim_to=model.trim_to,
                     system_prompt=system_prompt, fallback_answer=fallback_answer)
        engine.server.check_server()
        return engine
