"""The OpenAI-compatible backend against a fake completions server on loopback that runs the
same tiny real model: p_silence must equal the local engine's."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bot.config import GenerationSettings, OpenAISettings
from bot.engine.base import EngineError
from bot.engine.openai_backend import OpenAIEngine
from bot.engine.transformers_backend import TransformersEngine
from bot.message import ConversationKey, user
from bot.render import SILENCE
from bot.sessions import Session

KEY = ConversationKey("test", "oa")


def serve(lm: Any, echo: bool) -> tuple[ThreadingHTTPServer, list[dict[str, Any]]]:
    import torch

    requests: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(body)
            if self.path != "/v1/completions" or not isinstance(body.get("prompt"), list):
                self.send_response(404)
                self.end_headers()
                self.wfile.write(b'{"error": "not found"}')
                return
            ids = list(body["prompt"])
            with lock, torch.no_grad():
                logits = lm(torch.tensor([ids])).logits[0].float()
                lp = torch.log_softmax(logits, -1)
                prompt_lp = [None] + [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]
                out: list[int] = []
                gen_lp = []
                top = []
                stop = set(body.get("stop_token_ids") or [])
                cur = lp[-1]
                for _ in range(body.get("max_tokens", 16)):
                    if len(out) < body.get("min_tokens", 0):
                        cur = cur.clone()
                        for s in stop:
                            cur[s] = -math.inf
                    tok = int(torch.argmax(cur))
                    top.append({tok_str(tok): float(cur[tok])})
                    if tok in stop:
                        break
                    out.append(tok)
                    gen_lp.append(float(cur[tok]))
                    cur = torch.log_softmax(lm(torch.tensor([ids + out])).logits[0, -1].float(),
                                            -1)
            text = TOKENIZER[0].decode(out)
            logprobs = {"token_logprobs": (prompt_lp if echo and body.get("echo") else [])
                        + gen_lp, "top_logprobs": top}
            payload = json.dumps({"choices": [{"text": text, "logprobs": logprobs}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    def tok_str(i: int) -> str:
        return TOKENIZER[0].decode([i])

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, requests


TOKENIZER: list[Any] = []


@pytest.fixture
def server(request, tiny_lm, tiny_tokenizer) -> Iterator[tuple[str, list]]:  # type: ignore[no-untyped-def]
    TOKENIZER[:] = [tiny_tokenizer]
    srv, reqs = serve(tiny_lm, echo=getattr(request, "param", True))
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", reqs
    srv.shutdown()
    srv.server_close()


def make(tok, url: str) -> OpenAIEngine:  # type: ignore[no-untyped-def]
    return OpenAIEngine(tok, OpenAISettings(base_url=url, model="tiny", timeout_seconds=20),
                        generation=GenerationSettings(max_new_tokens=6, temperature=0.0))


CHAT = [user("Ann", "hello there"), user("Bob", "assistant, what is 2+2?"),
        user("Cy", "lol ok")]


def test_p_silence_matches_local_engine(server, tiny_lm, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    url, reqs = server
    remote = make(tiny_tokenizer, url)
    local = TransformersEngine(tiny_lm, tiny_tokenizer,
                               generation=GenerationSettings(max_new_tokens=6, temperature=0.0))
    rs, ls = Session(KEY), Session(KEY)
    for i, t in enumerate(CHAT):
        a = remote.decide(rs, [t], threshold=0.5, force=(i == 1))
        b = local.decide(ls, [t], threshold=0.5, force=(i == 1))
        assert a.p_silence == pytest.approx(b.p_silence, rel=1e-4)
        if a.speak:
            text_remote = remote.respond(rs)
            text_local = local.respond(ls)
            assert text_remote == text_local and SILENCE not in text_remote
    assert rs.turns == ls.turns
    assert reqs[0]["echo"] is True and isinstance(reqs[0]["prompt"][0], int)
    remote.close()


@pytest.mark.parametrize("server", [False], indirect=True)
def test_server_without_echo_falls_back_to_first_token(server, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    remote = make(tiny_tokenizer, url)
    d = remote.decide(Session(KEY), [CHAT[0]], threshold=0.5)
    assert 0.0 <= d.p_silence <= 1.0 and remote.server._echo is False


def test_unreachable_server_is_a_clear_error(tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    remote = make(tiny_tokenizer, f"http://127.0.0.1:{port}/v1")
    with pytest.raises(EngineError, match="cannot reach the model server"):
        remote.decide(Session(KEY), [CHAT[0]], threshold=0.5)


def test_server_error_is_reported(server, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    remote = make(tiny_tokenizer, url.replace("/v1", "/nope"))
    with pytest.raises(EngineError, match="answered 404"):
        remote.decide(Session(KEY), [CHAT[0]], threshold=0.5)


def test_an_unreachable_server_fails_at_start_up(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    import socket

    from bot.config import ModelSettings

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = OpenAISettings(base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout_seconds=5)
    with pytest.raises(EngineError, match="cannot reach the model server at .*set \\[openai\\]"):
        OpenAIEngine.from_settings(ModelSettings(backend="openai", path=str(tiny_model_dir)),
                                   api, GenerationSettings(max_new_tokens=4))
