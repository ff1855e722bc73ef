"""The OpenVINO backend: the fast CPU path, the way OpenVINO is fast.

- A stateful IR (`chimein export --openvino`): the KV cache lives inside the model as
  variables, under OpenVINO's fused attention. The model is compiled once; every conversation
  gets its own InferRequest of it, whose state is that conversation's KV cache (the
  session's `cache` is an `OVConversation`).
- Logits only for the rows a call needs: at load a `logits_to_keep` input is added that slices
  the hidden states before the LM head (the decision needs the row before the marker and the
  marker rows; a generation step one row). A 1k-token prefill no longer materialises
  1k x vocab floats.
- Cropping happens only when the model speaks (the `(silence)` marker makes way for the
  answer) or a cached prefix diverges. A short tail (the marker; the end of an answer that the
  posted turn renders differently) is not cut from the state but masked out: the attention mask
  gives those slots zero weight and positions go on from the real token count, so the numbers
  are exactly those of a cut cache, without touching the state. A long tail is cut by reading
  the state, keeping a region and setting it back (OpenVINO has no trim of its own;
  openvino_genai does the same). The answer's tokens stay cached: the next decision keeps as
  many of them as the posted turn renders alike.
- The session LRU (`runtime.max_sessions`, `max_kv_megabytes`) bounds it: a conversation
  reports its state bytes (slots x bytes per token of state), and dropping a session's cache
  drops its InferRequest.
- Weights in fp32 keep the state in fp32, so p_silence equals the transformers engine's on the
  same model; int8/int4 IRs keep the runtime's compressed state (u8 or f16), which is faster and
  smaller.
- At load, two warm-up calls let the CPU plugin repack the weights into its own memory; then
  the IR file's pages are handed back, so the weights are not resident twice.
- An older non-stateful IR (KV cache as explicit inputs and outputs) is converted to stateful
  when it is loaded, with a warning: it lacks the fused attention of a native stateful export.

openvino_genai is not used: its pipelines return generated tokens and at most the top-1
log-probability of generated tokens (`echo` returns the prompt's ids, not their
log-probabilities), so the probability of the forced `(silence)` marker cannot be read from
them; LLMPipeline holds one chat at a time, and ContinuousBatchingPipeline's prefix cache is
shared by hash with its own memory bound, not a per-conversation state the session LRU can
count and drop.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bot.config import GenerationSettings, ModelSettings
from bot.engine.base import EngineError, hub_offline
from bot.engine.decision import DecisionEngine, Scored, decode
from bot.engine.openvino_ir import (
    KEEP_INPUT,
    compressed,
    ensure_stateful,
    export_in_memory,
    keep_last_logits,
    release_file_pages,
    seq_axis,
)
from bot.engine.transformers_backend import _check_model_path
from bot.message import Turn
from bot.render import DecisionInput, Renderer
from bot.sessions import Session

log = logging.getLogger(__name__)

CHUNK_TOKENS = 256  # a long suffix is fed in pieces: bounded activations, faster on CPU
HOLES_MAX = 256  # a dropped tail up to this long is masked out rather than cut (an answer's)


class OVModel:
    """A stateful OpenVINO LM compiled once, and what feeding it needs to know."""

    def __init__(self, model: Any, *, threads: int | None = None,
                 weights_file: Path | None = None):
        import numpy as np
        import openvino as ov

        self.np = np
        names = {n for i in model.inputs for n in i.get_names()}
        for need in ("input_ids", "attention_mask"):
            if need not in names:
                raise EngineError(f"the OpenVINO model has no {need!r} input: not a causal LM "
                                  "exported by `chimein export --openvino`")
        self.sliced = keep_last_logits(model)
        self.names = {n for i in model.inputs for n in i.get_names()}
        reads = [op for op in model.get_ops() if op.get_type_name() == "ReadValue"]
        if not reads:
            raise EngineError("the OpenVINO model is not stateful (its KV cache is not state): "
                              "load it with load_ov_model, which converts older exports")
        self.seq_axis = seq_axis(reads[0])
        self.fp32_weights = not compressed(model)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if self.fp32_weights:  # exact state: the same p_silence as the transformers engine
            config["KV_CACHE_PRECISION"] = "f32"
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        kv = self.compiled.get_property("KV_CACHE_PRECISION")
        self.kv_precision = str(kv.get_type_name() if hasattr(kv, "get_type_name") else kv)
        self.state_elements = 0  # per token, over all the state's variables
        for op in reads:
            dims = op.get_output_partial_shape(0)
            self.state_elements += math.prod(d.get_length() for i, d in enumerate(dims)
                                             if i != self.seq_axis and d.is_static)
        self.bytes_per_token = self.state_elements * max(1, kv.size if hasattr(kv, "size") else 4)
        self.beam = np.zeros(1, dtype=np.int32)
        # The CPU plugin repacks the weights into its own memory on the first calls (a decode
        # step and a decision's shape); after that it never reads the IR file's pages again.
        # Running those calls now moves that cost from the first message to the start, and
        # the file's pages (the weights' size again: 1.5 GB for fp32 at 0.5B) can go back.
        warm = self.conversation()
        warm.feed([0, 0], 1)
        warm.feed([0] * 33, 1)
        del warm
        if weights_file is not None:
            freed = release_file_pages(weights_file)
            log.info("OpenVINO runs on its own copy of the weights: %.0f MB of %s's pages "
                     "handed back", freed / 2**20, weights_file.name)

    def conversation(self) -> OVConversation:
        return OVConversation(self)


class OVConversation:
    """One conversation's KV cache: an InferRequest of the shared compiled model. Its state has
    `slots` positions: the `n` tokens of the session's ids, and holes (masked-out dropped tails,
    see `crop`). This is what `Session.cache` holds for the openvino backend."""

    def __init__(self, model: OVModel):
        self.model = model
        self.request = model.compiled.create_infer_request()
        self.n = 0
        self.slots = 0
        self.set_slots = 0  # slots whose state was set from outside (by a cut): held as f32
        self._mask = model.np.ones((1, 256), dtype=model.np.int64)  # 0 marks a hole
        self.answer_from: int | None = None  # where kept answer tokens begin (see generate)

    @property
    def nbytes(self) -> int:
        m = self.model
        # OpenVINO keeps a state set from outside at the precision it was given (f32 from
        # get_state), beside its own compressed copy: measured, about 4x an u8 state's bytes.
        extra = 0 if m.kv_precision == "f32" else self.set_slots * m.state_elements * 4
        return self.slots * m.bytes_per_token + extra

    def adopt(self, n_new: int) -> None:
        """Count `n_new` tokens that a caller fed to `request` itself (the raw-OpenVINO
        benchmark runs on a conversation's own state; `crop` then drops them)."""
        self._attention(n_new)
        self.n += n_new
        self.slots += n_new

    def get_seq_length(self) -> int:
        return self.n

    def feed(self, ids: Sequence[int], keep: int) -> Any:
        """Run `ids` on top of the state; the logits of the last `keep` rows (float32).
        Long inputs go in chunks; the last chunk carries every row asked for."""
        np = self.model.np
        if not ids:
            raise ValueError("feed() needs at least one token")
        keep = max(1, min(keep, len(ids)))
        bounds = list(range(0, len(ids), CHUNK_TOKENS)) + [len(ids)]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < keep:
            del bounds[-2]
        out = None
        for lo, hi in itertools.pairwise(bounds):
            rows = keep if hi == len(ids) else 1
            out = self._infer(np.asarray([ids[lo:hi]], dtype=np.int64), rows)
        return out

    def _attention(self, n_new: int) -> Any:
        np, end = self.model.np, self.slots + n_new
        if self._mask.shape[1] < end:
            grown = np.ones((1, max(end, 2 * self._mask.shape[1])), dtype=np.int64)
            grown[:, : self.slots] = self._mask[:, : self.slots]
            self._mask = grown
        self._mask[:, self.slots:end] = 1
        return self._mask[:, :end]

    def _infer(self, x: Any, keep: int) -> Any:
        m, np = self.model, self.model.np
        n_new = x.shape[1]
        inputs = {"input_ids": x, "attention_mask": self._attention(n_new)}
        if "position_ids" in m.names:  # positions count tokens, not holes
            inputs["position_ids"] = np.arange(self.n, self.n + n_new, dtype=np.int64)[None]
        if "beam_idx" in m.names:
            inputs["beam_idx"] = m.beam
        if m.sliced:
            inputs[KEEP_INPUT] = np.asarray([keep], dtype=np.int64)
        try:
            self.request.infer(inputs, share_inputs=True)
        except BaseException:
            self.n = -1  # the state is undefined now: the owner must drop it
            raise
        self.n += n_new
        self.slots += n_new
        logits = self.request.get_tensor("logits").data
        return np.array(logits[0, -keep:], dtype=np.float32)

    def crop(self, n: int) -> None:
        """Keep the first `n` tokens. A short dropped tail is masked out (no state is touched);
        a long one is cut: the state is read, a region of it kept and set back."""
        import openvino as ov

        if n >= self.n:
            return
        self.answer_from = None
        if n <= 0:
            self.request.reset_state()
            self.n = self.slots = self.set_slots = 0
            return
        cut = int(self.model.np.flatnonzero(self._mask[0, : self.slots])[n])  # token n's slot
        if self.slots - cut <= HOLES_MAX and "position_ids" in self.model.names:
            self._mask[:, cut:self.slots] = 0
            self.n = n
            return
        axis = self.model.seq_axis
        for state in self.request.query_state():
            t = state.state
            end = list(t.shape)
            end[axis] = cut
            state.state = ov.Tensor(t, ov.Coordinate([0] * len(end)), ov.Coordinate(end))
        self.n, self.slots, self.set_slots = n, cut, cut


class OVStateful:
    """The decision backend over an OVModel: the prefix check against the conversation's
    cached ids, the marker's probability from the rows the decision needs, and sampling after
    the forced `(response)` prefix (numpy; the logits never leave numpy)."""

    def __init__(self, model: OVModel, tokenizer: Any, renderer: Renderer, *,
                 generation: GenerationSettings):
        self.model: OVModel | None = model
        self.np = model.np
        self.tokenizer = tokenizer
        self.renderer = renderer
        self.gen = generation
        self._rng = model.np.random.default_rng(generation.seed)

    def _conversation(self, session: Session) -> OVConversation:
        conv = session.cache
        if isinstance(conv, OVConversation) and conv.model is self.model \
                and conv.n == len(session.ids):
            return conv
        if self.model is None:
            raise EngineError("the openvino engine is closed")
        if session.ids:
            log.info("the cache of %s is not this model's state (or a call on it failed): "
                     "recomputing", session.key)
            session.recomputes += 1
        session.drop_cache()
        conv = session.cache = self.model.conversation()
        return conv

    def _sync_prefix(self, session: Session, target: list[int], limit: int) -> tuple[int, bool]:
        """How many of `target`'s ids (at most `limit`) the cache already holds, cropping what
        diverges; and whether that was a recompute (a divergence before kept answer tokens)."""
        had = bool(session.ids)
        conv = self._conversation(session)
        cached = session.ids
        answer_from, conv.answer_from = conv.answer_from, None
        n = 0
        limit = min(len(cached), len(target), limit)
        while n < limit and cached[n] == target[n]:
            n += 1
        if n == len(cached):
            return n, had and not cached
        kept_answer = answer_from is not None and n >= answer_from
        if not kept_answer:
            log.info("cached tokens of %s are not a prefix of the new rendering (diverge at "
                     "%d of %d): recomputing from there", session.key, n, len(cached))
            session.recomputes += 1
        conv.crop(n)
        session.ids = cached[:n]
        return n, not kept_answer

    def prefill(self, session: Session, ids: list[int], budget: int) -> bool:
        start, recomputed = self._sync_prefix(session, ids, len(ids))
        session.rebuilt = session.rebuilt or recomputed
        if len(ids) - start <= budget:
            return False  # what is left goes with the decision
        self._feed(session, ids[start:start + budget], 1)
        return True

    def _feed(self, session: Session, ids: list[int], keep: int) -> Any:
        conv = self._conversation(session)
        try:
            logits = conv.feed(ids, keep)
        except BaseException:
            session.drop_cache()
            raise
        session.ids = session.ids + list(ids)
        return logits

    def score(self, session: Session, d: DecisionInput | None,
              turns: Sequence[Turn]) -> Scored:
        if d is None:
            raise EngineError("the openvino backend renders: it needs the decision input")
        np = self.np
        # the row before the marker predicts the marker's first token: it is always fed
        start, recomputed = self._sync_prefix(session, d.ids, d.marker_start - 1)
        recomputed, session.rebuilt = recomputed or session.rebuilt, False
        n_marker = len(d.ids) - d.marker_start
        logits = self._feed(session, d.ids[start:], n_marker + 1)
        rows = logits[:n_marker].astype(np.float64)  # row r predicts token r+1
        top = rows.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
        marker = np.asarray(d.ids[d.marker_start:])
        logp = float((rows[np.arange(n_marker), marker] - lse).sum())
        return Scored(math.exp(logp), len(d.ids) - start, recomputed)

    def generate(self, session: Session, d: DecisionInput | None, turns: Sequence[Turn],
                 on_text: Callable[[str], None] | None) -> str:
        if d is None:
            raise EngineError("the openvino backend renders: it needs the decision input")
        conv = self._conversation(session)
        # The marker makes way for the answer: back to the assistant header.
        keep, cached = 0, session.ids
        while keep < min(d.marker_start, len(cached)) and cached[keep] == d.ids[keep]:
            keep += 1
        conv.crop(keep)
        session.ids = cached[:keep]
        logits = self._feed(session, d.ids[keep:d.marker_start] + list(d.response_ids), 1)[-1]
        text = decode(logits, sample=self._sample,
                      step=lambda tok: self._feed(session, [tok], 1)[-1],
                      tokenizer=self.tokenizer, end_of_turn=self.renderer.end_of_turn_ids,
                      max_new_tokens=self.gen.max_new_tokens, on_text=on_text)
        # The answer's tokens stay cached: the next decision's prefix check keeps as many of
        # them as the posted turn renders the same, and trims the rest without a recompute.
        conv.answer_from = d.marker_start
        return text

    def _sample(self, logits: Any) -> int:
        np, g = self.np, self.gen
        if g.temperature <= 0:
            return int(np.argmax(logits))
        x = logits.astype(np.float64) / g.temperature
        if g.top_k and g.top_k < x.size:
            kth = np.partition(x, -g.top_k)[-g.top_k]
            x = np.where(x < kth, -math.inf, x)
        p = np.exp(x - x.max())
        p /= p.sum()
        if 0 < g.top_p < 1:
            order = np.argsort(-p, kind="stable")
            sp = p[order]
            sp[np.cumsum(sp) - sp > g.top_p] = 0.0
            p = np.zeros_like(p)
            p[order] = sp
            p /= p.sum()
        return int(self._rng.choice(p.size, p=p))

    def close(self) -> None:
        self.model = None


def load_ov_model(model: ModelSettings) -> tuple[OVModel, Any]:
    """The compiled stateful model and its tokenizer, from an IR folder or (exported in memory)
    a transformers folder."""
    try:
        import openvino as ov
    except ImportError as e:
        raise EngineError("model.backend = 'openvino' needs openvino: "
                          "pip install 'chimein[openvino]'") from e
    from transformers import AutoTokenizer

    _check_model_path(model.path)
    if model.adapter:
        raise EngineError("the openvino backend runs merged models: merge the LoRA adapter "
                          "first (`chimein export --openvino`) and point model.path at it")
    if model.quantize != "none":
        raise EngineError("model.quantize is for the transformers backend; OpenVINO weights "
                          "are compressed at export time")
    local_only = hub_offline()
    xml = Path(model.path).expanduser() / "openvino_model.xml"
    try:
        tok = AutoTokenizer.from_pretrained(model.path, local_files_only=local_only)
        if xml.exists():
            ir = ov.Core().read_model(xml)
            ensure_stateful(ir, model.path)
        else:
            ir = export_in_memory(model.path, local_only)
    except EngineError:
        raise
    except OSError as e:
        raise EngineError(f"cannot load model {model.path!r}: {e}".split("\n")[0]) from e
    except RuntimeError as e:  # openvino's own errors: unreadable or unsupported IR
        raise EngineError(f"cannot load OpenVINO model {model.path!r}: "
                          f"{str(e).strip().splitlines()[-1]}") from e
    threads = os.environ.get("OMP_NUM_THREADS")
    return OVModel(ir, threads=int(threads) if threads and threads.isdigit() else None,
                   weights_file=xml.with_suffix(".bin") if xml.exists() else None), tok



class OpenVINOEngine(DecisionEngine):
    """The decision skeleton over a stateful OpenVINO model in this process (OVStateful)."""

    def __init__(self, model: OVModel, tokenizer: Any, *, generation: GenerationSettings,
                 max_context_tokens: int = 2048, trim_to: float = 0.45, system_prompt: str = "",
                 fallback_answer: str = "", version: str = "unversioned"):
        renderer = Renderer(tokenizer, system_prompt)
        self.lm = OVStateful(model, tokenizer, renderer, generation=generation)
        super().__init__(self.lm, renderer, version=version,
                         max_context_tokens=max_context_tokens,
                         max_new_tokens=generation.max_new_tokens, trim_to=trim_to,
                         fallback_answer=fallback_answer)
        self.model, self.tokenizer = model, tokenizer

    @classmethod
    def from_settings(cls, model: ModelSettings, generation: GenerationSettings, *,
                      system_prompt: str = "", fallback_answer: str = "",
                      version: str | None = None) -> OpenVINOEngine:
        ov, tok = load_ov_model(model)
        return cls(ov, tok, generation=generation, max_context_tokens=model.max_context_tokens,
                   trim_to=model.trim_to, system_prompt=system_prompt,
                   fallback_answer=fallback_answer, version=version or Path(model.path).name)
