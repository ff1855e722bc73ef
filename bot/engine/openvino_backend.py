"""The OpenVINO backend: the fast CPU path (optimum-intel's OVModelForCausalLM).

The model is used in its non-stateful form, with the KV cache as explicit inputs and outputs,
so the engine keeps per-conversation KV state and crops it exactly as the transformers backend
does: the decision skeleton (bot.engine.decision) and TorchLM's scoring and sampling are
shared; only the forward call (`ov_forward`) and the cache type differ.

`model.path` may be an OpenVINO IR folder (openvino_model.xml, e.g. from `chimein export
--openvino`, exported with stateful=False) or a transformers folder, exported on the fly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.config import GenerationSettings, ModelSettings
from bot.engine.base import EngineError
from bot.engine.transformers_backend import TransformersEngine, _check_model_path
from bot.sessions import Session

log = logging.getLogger(__name__)


class OVCache:
    """A non-stateful OpenVINO model's KV cache: a tuple of (key, value) per layer."""

    def __init__(self, past: Any):
        self.past = past

    def get_seq_length(self) -> int:
        return int(self.past[0][0].shape[-2]) if self.past else 0

    def crop(self, n: int) -> None:
        self.past = tuple(tuple(t[..., :n, :] for t in layer) for layer in self.past)

    @property
    def nbytes(self) -> int:
        return int(sum(t.numel() * t.element_size() if hasattr(t, "numel") else t.nbytes
                       for layer in self.past for t in layer))


def load_ov_model(model: ModelSettings) -> tuple[Any, Any]:
    try:
        from optimum.intel import OVModelForCausalLM
    except ImportError as e:
        raise EngineError("model.backend = 'openvino' needs optimum-intel: "
                          "pip install 'chimein[openvino]'") from e
    from transformers import AutoTokenizer

    _check_model_path(model.path)
    if model.adapter:
        raise EngineError("the openvino backend runs merged models: merge the LoRA adapter "
                          "first (`chimein export --openvino`) and point model.path at it")
    if model.quantize != "none":
        raise EngineError("model.quantize is for the transformers backend; OpenVINO weights "
                          "are compressed at export time")
    local_only = os.environ.get("HF_HUB_OFFLINE") == "1"
    is_ir = (Path(model.path) / "openvino_model.xml").exists()
    threads = os.environ.get("OMP_NUM_THREADS")
    ov_config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        ov_config["INFERENCE_NUM_THREADS"] = threads
    # optimum warns on every load of a non-stateful IR ("does not contain state... re-export")
    # and that it could not look the folder up on the hub: both are expected here (the cache
    # must be croppable per conversation), so they are shown only with -vv.
    quiet = not log.isEnabledFor(logging.DEBUG)
    optimum_log = logging.getLogger("optimum")
    level = optimum_log.level
    if quiet:
        optimum_log.setLevel(logging.ERROR)
    try:
        tok = AutoTokenizer.from_pretrained(model.path, local_files_only=local_only)
        if not is_ir:
            log.info("exporting %s to OpenVINO IR in memory (use `chimein export --openvino` "
                     "once to skip this at every start)", model.path)
        ov = OVModelForCausalLM.from_pretrained(model.path, export=not is_ir, stateful=False,
                                                use_cache=True, ov_config=ov_config,
                                                local_files_only=local_only)
    except OSError as e:
        raise EngineError(f"cannot load model {model.path!r}: {e}".split("\n")[0]) from e
    finally:
        optimum_log.setLevel(level)
    if ov.stateful:
        raise EngineError(f"{model.path} holds a stateful OpenVINO model, whose KV cache cannot "
                          "be cropped per conversation: re-export it with `chimein export "
                          "--openvino` (stateful=False)")
    return ov, tok


def ov_forward(ov: Any) -> Callable[[Session, list[int], int], Any]:
    """The forward TorchLM calls, on a non-stateful OpenVINO model: the cache goes in and
    comes out as explicit tensors, kept per conversation as an OVCache."""
    import torch

    def forward(session: Session, ids: list[int], keep: int) -> Any:
        cache: OVCache | None = session.cache
        past = cache.past if cache is not None else None
        n_past = cache.get_seq_length() if cache is not None else 0
        x = torch.tensor([ids], dtype=torch.long)
        mask = torch.ones((1, n_past + len(ids)), dtype=torch.long)
        with torch.inference_mode():
            out = ov(input_ids=x, attention_mask=mask, past_key_values=past)
        session.cache = OVCache(out.past_key_values)
        return torch.as_tensor(out.logits[0, -keep:]).float().clone()

    return forward


class OpenVINOEngine(TransformersEngine):
    """TorchLM's decision and sampling on an OpenVINO model: it only passes the OpenVINO
    forward (`ov_forward`) in; no behaviour is overridden."""

    def __init__(self, model: Any, tokenizer: Any, **kwargs: Any):
        super().__init__(model, tokenizer, **{**kwargs, "device": "cpu",
                                              "forward": ov_forward(model)})

    @classmethod
    def from_settings(cls, model: ModelSettings, generation: GenerationSettings, *,
                      system_prompt: str = "", fallback_answer: str = "",
                      version: str | None = None) -> OpenVINOEngine:
        ov, tok = load_ov_model(model)
        return cls(ov, tok, generation=generation, max_context_tokens=model.max_context_tokens,
                   trim_to=model.trim_to, system_prompt=system_prompt,
                   fallback_answer=fallback_answer, version=version or Path(model.path).name)
