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

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from bot.config import GenerationSettings, ModelSettings, OpenAISettings
from bot.engine.base import EngineError
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
        self.client = client or httpx.Client(base_url=api.base_url.rstrip("/") + "/",
                                             headers=headers, timeout=api.timeout_seconds)
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
        import httpx

        body = {"model": self.api.model, **body}
        try:
            r = self.client.post("completions", json=body)
        except httpx.HTTPError as e:
            raise EngineError(f"cannot reach the model server at {self.api.base_url}: {e}") \
                from e
        if r.status_code >= 400:
            raise EngineError(f"model server answered {r.status_code}: {r.text[:300]}")
        data: dict[str, Any] = r.json()
        if not data.get("choices"):
            raise EngineError(f"model server sent no choices: {str(data)[:300]}")
        return data

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
                 max_context_tokens: int = 2048, trim_to: float = 0.6, system_prompt: str = "",
                 fallback_answer: str = "", version: str | None = None, client: Any = None):
        renderer = Renderer(tokenizer, system_prompt)
        self.server = OpenAIServer(tokenizer, renderer, api, generation=generation,
                                   client=client)
        super().__init__(self.server, renderer, version=version or f"openai:{api.model}",
                         max_context_tokens=max_context_tokens,
                         max_new_tokens=generation.max_new_tokens, trim_to=trim_to,
                         fallback_answer=fallback_answer)
        self.tokenizer = tokenizer

    @classmethod
    def from_settings(cls, model: ModelSettings, api: OpenAISettings,
                      generation: GenerationSettings, *, system_prompt: str = "",
                      fallback_answer: str = "") -> OpenAIEngine:
        from transformers import AutoTokenizer

        source = model.path or api.model
        try:
            tok = AutoTokenizer.from_pretrained(
                source, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
        except OSError as e:
            raise EngineError(f"the openai backend renders prompts locally and needs the "
                              f"served model's tokenizer: cannot load {source!r} ({e})"
                              .split("\n")[0]) from e
        engine = cls(tok, api, generation=generation,
                     max_context_tokens=model.max_context_tokens, trim_to=model.trim_to,
                     system_prompt=system_prompt, fallback_answer=fallback_answer)
        engine.server.check_server()
        return engine
