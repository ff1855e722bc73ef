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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bot.config import GenerationSettings, ModelSettings
from bot.engine.base import EngineError, hub_offline
from bot.engine.decision import DecisionEngine, Scored, decode
from bot.message import Turn
from bot.render import DecisionInput, Renderer
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
    if not p.exists() and hub_offline():
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
    local_only = hub_offline()
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


class TorchLM:
    """The decision backend for a causal LM called like a transformers model: the prefix
    check against the session's cached ids, the marker's probability from one forward over
    the missing suffix, and sampling after the forced `(response) ` prefix.

    `forward(session, ids, keep)` runs `ids` on top of the session's cache, stores the new
    cache in the session and returns the logits of the last `keep` rows; the default calls
    the torch model (`torch_forward`), OpenVINO passes its own (`ov_forward`)."""

    def __init__(self, model: Any, tokenizer: Any, renderer: Renderer, *,
                 generation: GenerationSettings, device: str = "cpu",
                 forward: Callable[[Session, list[int], int], Any] | None = None):
        import torch

        self.torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.renderer = renderer
        self.gen = generation
        self.device = device
        self.forward = forward or self.torch_forward
        self._rng = torch.Generator(device="cpu")
        if generation.seed is not None:
            self._rng.manual_seed(generation.seed)
        else:
            self._rng.seed()

    def torch_forward(self, session: Session, ids: list[int], keep: int) -> Any:
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

    def prefill(self, session: Session, ids: list[int], budget: int) -> bool:
        start, recomputed = self._sync_prefix(session, ids)
        session.rebuilt = session.rebuilt or recomputed
        if len(ids) - start <= budget:
            return False  # what is left goes with the decision
        self.forward(session, ids[start:start + budget], 1)
        session.ids = ids[:start + budget]
        return True

    def score(self, session: Session, d: DecisionInput | None,
              turns: Sequence[Turn]) -> Scored:
        assert d is not None  # this backend renders: the engine always passes the input
        start, recomputed = self._sync_prefix(session, d.ids)
        recomputed, session.rebuilt = recomputed or session.rebuilt, False
        suffix = d.ids[start:]
        n_marker = len(d.ids) - d.marker_start
        # logits row r predicts token r+1: keep the row before the marker and the marker rows
        logits = self.forward(session, suffix, n_marker + 1)
        logp = self.torch.log_softmax(logits[:n_marker], dim=-1)
        marker = self.torch.tensor(d.ids[d.marker_start:], device=logp.device)
        p = math.exp(float(logp.gather(1, marker[:, None]).sum()))
        return Scored(p, len(suffix), recomputed)

    def generate(self, session: Session, d: DecisionInput | None, turns: Sequence[Turn],
                 on_text: Callable[[str], None] | None) -> str:
        assert d is not None
        # Back to the assistant header: the marker is replaced by the forced (response) prefix.
        session.cache.crop(d.marker_start)
        session.ids = session.ids[: d.marker_start]
        logits = self.forward(session, d.response_ids, 1)[-1]
        try:
            return decode(logits, sample=self._sample,
                          step=lambda tok: self.forward(session, [tok], 1)[-1],
                          tokenizer=self.tokenizer, end_of_turn=self.renderer.end_of_turn_ids,
                          max_new_tokens=self.gen.max_new_tokens, on_text=on_text)
        finally:
            # The cache goes back to the header; the next decision feeds the posted turn as the
            # template renders it, so what is cached is always what training would see.
            session.cache.crop(d.marker_start)

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

    def close(self) -> None:
        self.model = None


class TransformersEngine(DecisionEngine):
    """The decision skeleton over a transformers causal LM held in this process."""

    def __init__(self, model: Any, tokenizer: Any, *, generation: GenerationSettings,
                 max_context_tokens: int = 2048, trim_to: float = 0.45, system_prompt: str = "",
                 fallback_answer: str = "", version: str = "unversioned",
                 device: str = "cpu",
                 forward: Callable[[Session, list[int], int], Any] | None = None):
        renderer = Renderer(tokenizer, system_prompt)
        self.lm = TorchLM(model, tokenizer, renderer, generation=generation, device=device,
                          forward=forward)
        super().__init__(self.lm, renderer, version=version,
                         max_context_tokens=max_context_tokens,
                         max_new_tokens=generation.max_new_tokens, trim_to=trim_to,
                         fallback_answer=fallback_answer)
        self.model, self.tokenizer, self.device = model, tokenizer, device

    @classmethod
    def from_settings(cls, model: ModelSettings, generation: GenerationSettings, *,
                      system_prompt: str = "", fallback_answer: str = "",
                      version: str | None = None) -> TransformersEngine:
        lm, tok, device = load_model(model)
        return cls(lm, tok, generation=generation, max_context_tokens=model.max_context_tokens,
                   trim_to=model.trim_to, system_prompt=system_prompt,
                   fallback_answer=fallback_answer,
                   version=version or Path(model.adapter or model.path).name, device=device)
