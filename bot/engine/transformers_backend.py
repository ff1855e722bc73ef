"""The transformers backend: CPU (fp32) or CUDA, optional 4-bit NF4, optional LoRA adapter.

The silence decision is ONE forward pass over only the new tokens (new user turn(s), the
assistant header and the `(silence)` marker) on top of the session's cached KV state; the
log-probability of the marker tokens gives p_silence. Silent: the cache already holds the
silence turn. Speaking: crop the cache back to the assistant header, force `(response)` and
sample until end of turn.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bot.config import GenerationSettings, ModelSettings
from bot.engine.base import Decision, EngineError
from bot.engine.context import fit_context, render_decision
from bot.message import Turn
from bot.render import ASSISTANT_NAME, DecisionInput, Renderer, strip_markers, with_silences
from bot.sessions import Session

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineError("model.device = 'cuda' but no CUDA device is available here "
                          "(torch.cuda.is_available() is False); use 'cpu' or 'auto'")
    return device


def _check_model_path(path: str) -> None:
    if not path:
        raise EngineError("model.path is empty: set it in config.toml ([model] path = ...) or "
                          "pass --model PATH (a local folder or a hub id)")
    p = Path(path).expanduser()
    # "models/nope" is a local typo, not a hub id, when its first folder exists here
    looks_local = (path.startswith((".", "/", "~")) or p.exists() or path.count("/") > 1
                   or (len(p.parts) > 1 and Path(p.parts[0]).is_dir()))
    if looks_local and not p.exists():
        raise EngineError(f"model path {path!r} does not exist")
    if p.exists() and p.is_dir() and not (p / "config.json").exists():
        if (p / "adapter_config.json").exists():
            return
        raise EngineError(f"model path {path!r} has no config.json: not a transformers model "
                          "folder (for a registry folder use model.registry_dir)")
    if not p.exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise EngineError(f"{path!r} is not a folder here, and HF_HUB_OFFLINE=1 forbids "
                          "downloading it from the hub: download it once without "
                          "HF_HUB_OFFLINE, or pass a local folder")


def load_model(model: ModelSettings) -> tuple[Any, Any, str]:
    """(model, tokenizer, device) from settings, with clear errors for the usual mistakes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_model_path(model.path)
    p = Path(model.path).expanduser()
    if (p / "openvino_model.xml").exists() and not any(p.glob("*.safetensors")) \
            and not any(p.glob("pytorch_model*.bin")):
        raise EngineError(f"model path {model.path!r} is an OpenVINO export: serve it with "
                          "model.backend = \"openvino\" (evaluation and training need the "
                          "transformers model it was exported from)")
    device = resolve_device(model.device)
    kwargs: dict[str, Any] = {}
    if model.quantize == "nf4":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise EngineError("model.quantize = 'nf4' needs bitsandbytes: "
                              "pip install 'chimein[gpu]'") from e
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False) \
            else torch.float16 if device == "cuda" else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True)
        kwargs["device_map"] = {"": 0} if device == "cuda" else {"": "cpu"}
    # This CPU has no fast bf16 (measured 8-70x slower): fp32 on CPU, half precision on CUDA.
    if device == "cuda":
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    else:
        kwargs["dtype"] = torch.float32
    local_only = os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        tokenizer = AutoTokenizer.from_pretrained(model.path, local_files_only=local_only)
        lm = AutoModelForCausalLM.from_pretrained(model.path, local_files_only=local_only,
                                                  **kwargs)
    except OSError as e:
        raise EngineError(f"cannot load model {model.path!r}: {e}".split("\n")[0]) from e
    except (ValueError, RuntimeError, ImportError) as e:
        if model.quantize == "nf4":
            raise EngineError(f"4-bit NF4 loading failed on {device}: {e}. bitsandbytes "
                              "supports CUDA and x86 CPUs; set model.quantize = 'none' "
                              "on other devices") from e
        raise EngineError(f"cannot load model {model.path!r}: {e}") from e
    if model.quantize != "nf4":
        lm.to(device)  # type: ignore[arg-type]
    if model.adapter:
        try:
            from peft import PeftModel
        except ImportError as e:
            raise EngineError("model.adapter needs peft installed") from e
        if not Path(model.adapter).exists():
            raise EngineError(f"model.adapter {model.adapter!r} does not exist")
        lm = PeftModel.from_pretrained(lm, model.adapter)  # type: ignore[assignment]
    lm.eval()
    if hasattr(lm, "generation_config"):
        lm.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    return lm, tokenizer, device


class TransformersEngine:
    """Engine backed by a transformers causal LM held in this process."""

    def __init__(self, model: Any, tokenizer: Any, *, generation: GenerationSettings,
                 max_context_tokens: int = 2048, trim_to: float = 0.6, system_prompt: str = "",
                 fallback_answer: str = "Sorry, I don't have a good answer to that.",
                 version: str = "unversioned", device: str = "cpu"):
        import torch

        self.torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.renderer = Renderer(tokenizer, system_prompt)
        self.gen = generation
        self.max_context = max_context_tokens
        self.trim_to = trim_to
        self.fallback_answer = fallback_answer
        self.version = version
        self.device = device
        self._rng = torch.Generator(device="cpu")
        if generation.seed is not None:
            self._rng.manual_seed(generation.seed)
        else:
            self._rng.seed()

    @classmethod
    def from_settings(cls, model: ModelSettings, generation: GenerationSettings, *,
                      system_prompt: str = "", fallback_answer: str = "",
                      version: str | None = None) -> TransformersEngine:
        lm, tok, device = load_model(model)
        return cls(lm, tok, generation=generation, max_context_tokens=model.max_context_tokens,
                   trim_to=model.trim_to, system_prompt=system_prompt,
                   fallback_answer=fallback_answer or "Sorry, I don't have a good answer.",
                   version=version or Path(model.adapter or model.path).name, device=device)

    # -- history ----------------------------------------------------------------------
    def observe(self, session: Session, new_turns: Sequence[Turn]) -> None:
        session.pending = None
        session.turns = with_silences(session.turns + list(new_turns))

    # -- model calls -------------------------------------------------------------------
    def _forward(self, session: Session, ids: list[int], keep: int) -> Any:
        """Run `ids` on top of the session's cache; returns logits of the last `keep` rows."""
        torch = self.torch
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model(input_ids=x, past_key_values=session.cache, use_cache=True,
                             logits_to_keep=keep)
        session.cache = out.past_key_values
        return out.logits[0].float().clone()

    def _sync_prefix(self, session: Session, target: list[int]) -> tuple[int, bool]:
        """How many of `target`'s ids are already in the cache (cropping a diverged cache)."""
        cached = session.ids
        if session.cache is not None and cached and len(cached) < len(target) \
                and target[: len(cached)] == cached:
            return len(cached), False
        recomputed = bool(cached)
        if recomputed:
            n = 0
            limit = min(len(cached), len(target) - 1)
            while n < limit and cached[n] == target[n]:
                n += 1
            log.info("cached tokens of %s are not a prefix of the new rendering (diverge at "
                     "%d of %d): recomputing from there", session.key, n, len(cached))
            session.recomputes += 1
            if n > 0 and session.cache is not None and hasattr(session.cache, "crop"):
                session.cache.crop(n)
                session.ids = cached[:n]
                return n, True
        session.drop_cache()
        return 0, recomputed

    def decide(self, session: Session, new_turns: Sequence[Turn], *, threshold: float,
               force: bool = False) -> Decision:
        t0 = time.perf_counter()
        new_turns = [t for t in new_turns if t.role == "user"]
        if not new_turns:
            raise ValueError("decide() needs at least one new user turn")
        d, new_turns = fit_context(self.renderer, session, new_turns,
                                   max_context=self.max_context,
                                   max_new_tokens=self.gen.max_new_tokens, trim_to=self.trim_to)
        start, recomputed = self._sync_prefix(session, d.ids)
        suffix = d.ids[start:]
        p_silence = self._p_marker(session, d, suffix)
        session.ids = list(d.ids)
        session.turns = with_silences(session.turns + new_turns)  # ends with the silence turn
        speak = force or p_silence < threshold
        if speak:
            session.pending = d
        return Decision(p_silence=p_silence, speak=speak, forced=force, fed_tokens=len(suffix),
                        recomputed=recomputed, latency_ms=(time.perf_counter() - t0) * 1000)

    def respond(self, session: Session, on_text: Callable[[str], None] | None = None) -> str:
        d: DecisionInput | None = session.pending
        if d is None:
            raise RuntimeError("respond() called without a speaking decision")
        session.pending = None
        torch = self.torch
        # Back to the assistant header: the marker is replaced by the forced (response) prefix.
        session.cache.crop(d.marker_start)
        session.ids = session.ids[: d.marker_start]
        eot = set(self.renderer.end_of_turn_ids)
        logits = self._forward(session, d.response_ids, keep=1)[-1]
        generated: list[int] = []
        text = ""
        try:
            for _ in range(self.gen.max_new_tokens):
                if not strip_markers(text):
                    for i in eot:  # no end of turn before the answer has content
                        logits[i] = -math.inf
                tok = self._sample(logits)
                if tok in eot:
                    break
                generated.append(tok)
                text = self.tokenizer.decode(generated, skip_special_tokens=True)
                if on_text is not None:
                    on_text(strip_markers(text))
                logits = self._forward(session, [tok], keep=1)[-1]
        finally:
            # The cache goes back to the header; the next decision feeds the posted turn as the
            # template renders it, so what is cached is always what training would see.
            session.cache.crop(d.marker_start)
        answer = strip_markers(text) or self.fallback_answer
        session.turns = session.turns[:-1] + [Turn("assistant", answer, ASSISTANT_NAME)]
        del torch
        return answer

    def _sample(self, logits: Any) -> int:
        torch = self.torch
        g = self.gen
        if g.temperature <= 0:
            return int(torch.argmax(logits))
        logits = logits / g.temperature
        if g.top_k and g.top_k < logits.shape[-1]:
            kth = torch.topk(logits, g.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, -math.inf)
        probs = torch.softmax(logits, dim=-1)
        if 0 < g.top_p < 1:
            sp, si = torch.sort(probs, descending=True)
            cum = torch.cumsum(sp, dim=-1)
            cut = cum - sp > g.top_p
            sp = sp.masked_fill(cut, 0.0)
            probs = torch.zeros_like(probs).scatter(0, si, sp)
        probs = probs / probs.sum()
        return int(torch.multinomial(probs.cpu(), 1, generator=self._rng))

    def score_silence(self, turns: Sequence[Turn]) -> float:
        """p_silence for a whole conversation ending in user turns, with no cache (a check)."""
        d = render_decision(self.renderer, (), turns)
        return self._p_marker(Session(key=None), d, d.ids)  # type: ignore[arg-type]

    def _p_marker(self, session: Session, d: DecisionInput, feed: list[int]) -> float:
        """Feed `feed` (the end of `d.ids`) on top of the session's cache; the probability of
        the whole `(silence)` marker that ends `d`."""
        n_marker = len(d.ids) - d.marker_start
        # logits row r predicts token r+1: keep the row before the marker and the marker rows
        logits = self._forward(session, feed, keep=n_marker + 1)
        logp = self.torch.log_softmax(logits[:n_marker], dim=-1)
        marker = self.torch.tensor(d.ids[d.marker_start:], device=logp.device)
        return math.exp(float(logp.gather(1, marker[:, None]).sum()))

    def close(self) -> None:
        self.model = None
