"""A fake OpenAI-compatible completions server on 127.0.0.1 for concurrency and retry tests
(and benchmarks/concurrency.py): it adds `delay` seconds to every request, counts requests in
flight, can answer a scripted list of error statuses first, and needs no model.

- A prompt-logprob request (`echo`) gets `logprob` for every prompt token, so p_silence is
  exp(logprob * marker tokens) (the default, -0.001 a token, means "silence").
- Any other request gets `answer` as the generated text.
The real tiny-model server that checks p_silence against the local engine is in
tests/test_openai_backend.py.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class FakeCompletions:
    def __init__(self, *, delay: float = 0.3, logprob: float = -0.001, answer: str = "ok",
                 errors: list[int] | None = None, retry_after: str | None = None):
        self.delay = delay
        self.logprob = logprob
        self.answer = answer
        self.errors = list(errors or [])  # statuses answered first, one per request
        self.retry_after = retry_after
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._srv: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._srv is not None
        return f"http://127.0.0.1:{self._srv.server_address[1]}/v1"

    def __enter__(self) -> Self:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the client's pool reuses connections

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # GET /models: the start-up reachability check
                self._send(200, {"data": [{"id": "fake"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.requests.append(body)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    status = fake.errors.pop(0) if fake.errors else 200
                try:
                    time.sleep(fake.delay)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1
                if status != 200:
                    self._send(status, {"error": {"message": f"fake {status}"}},
                               {"Retry-After": fake.retry_after} if fake.retry_after else {})
                    return
                prompt = body.get("prompt") or []
                if body.get("echo"):
                    lp = [None] + [fake.logprob] * (len(prompt) - 1)
                    choice = {"text": "", "logprobs": {"token_logprobs": lp + [fake.logprob],
                                                       "top_logprobs": [{}]}}
                else:
                    choice = {"text": fake.answer, "logprobs": None}
                self._send(200, {"choices": [choice]})

            def _send(self, status: int, obj: Any, headers: dict[str, str] | None = None
                      ) -> None:
                payload = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

        class Server(ThreadingHTTPServer):
            # socketserver listens with a backlog of 5: ten clients connecting at once had one
            # SYN dropped and retransmitted a second later (a 1 s outlier in the benchmark)
            request_queue_size = 128

        self._srv = Server(("127.0.0.1", 0), Handler)
        self._srv.daemon_threads = True
        threading.Thread(target=self._srv.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._srv is not None:
            self._srv.shutdown()
            self._srv.server_close()
