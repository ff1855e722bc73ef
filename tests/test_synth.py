"""`chimein data synth` against a fake OpenAI-compatible chat server on loopback that plays a
teacher from a script: what is kept, what is rejected and why, resume, and the errors."""

from __future__ import annotations

import _thread
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from adapters.cli import main as chimein
from training.data import read_file
from training.synth import (
    Rejected,
    SynthOptions,
    check_generation,
    extract_json,
    synthesize,
)

INTERRUPT = object()  # a script item: Ctrl-C the client while it waits for this answer


def u(name: str, text: str) -> dict[str, str]:
    return {"role": "user", "name": name, "content": text}


def a(text: str) -> dict[str, str]:
    return {"role": "assistant", "name": "assistant", "content": text}


EN = {"tags": ["engineering", "addressed"], "messages": [
    u("Priya", "deploy of the billing service is stuck at 80%"),
    u("Tom", "again? it was fine yesterday"),
    u("Priya", "the health check keeps timing out"),
    u("Tom", "did someone change the readiness probe"),
    u("Priya", "assistant, what's the default timeout for a kubernetes readiness probe?"),
    a("1 second: timeoutSeconds defaults to 1."),
    u("Tom", "that's tiny, our endpoint takes 2s on a cold start"),
    u("Priya", "bumping it to 5"),
    u("Tom", "ship it"),
]}
EN2 = {"tags": ["planning", "never-speaks", "hard-negative"], "messages": [
    u("Ana", "offsite is on the 14th, right?"),
    u("Ben", "yes, my assistant booked the room already"),
    u("Cleo", "nice. lunch included?"),
    u("Ana", "sandwiches i think"),
    u("Ben", "i'll bring the projector"),
    u("Cleo", "and i'll do the agenda"),
    u("Ana", "perfect, thanks all"),
]}
EN3 = {"tags": ["gaming", "chime-in"], "messages": [
    u("Kai", "how many players max in a valorant custom game"),
    u("Lin", "no idea, 10?"),
    u("Kai", "we have 12 people coming"),
    a("A custom game takes 10 players plus up to 2 spectators... I mean observers, so 12 fit "
      "if two watch."),
    u("Lin", "ok we rotate then"),
    u("Kai", "friday 8pm"),
    u("Lin", "i'm in"),
    u("Kai", "bring snacks"),
]}
ZH = {"tags": ["food", "addressed"], "messages": [
    u("小王", "今晚吃什么？"), u("阿杰", "火锅吧"), u("小王", "上次那家排队太久了"),
    u("阿杰", "那换一家"), u("小王", "助手，一斤等于多少克？"), a("一斤等于500克。"),
    u("阿杰", "好，买两斤牛肉"), u("小王", "我去订位"), u("阿杰", "七点见"),
]}
SEEDS = [
    {"id": "s1", "tags": ["ops", "en", "never-speaks"], "messages": [
        u("Rae", "the printer on floor 3 is jammed again"), u("Sol", "classic"),
        u("Rae", "who has the key to the supply room"), u("Sol", "facilities, I think"),
        u("Rae", "ok pinging them"), u("Sol", "good luck")]},
    {"id": "s2", "tags": ["community", "en", "addressed"], "messages": [
        u("Mo", "who has the projector remote from yesterday"), u("Ivy", "check the drawer"),
        u("Mo", "found it"), u("Ivy", "assistant, how many lumens is bright enough for a "
                                       "small room?"),
        a("About 2,000-3,000 lumens is plenty for a small room."),
        u("Mo", "ours is 2500 so fine"), u("Ivy", "great"), u("Mo", "setting up now")]},
]
SEED_TEXTS = ["the printer on floor 3 is jammed again", "who has the projector remote"]


def fenced(obj: Any) -> str:
    return "Here you go:\n```json\n" + json.dumps(obj, ensure_ascii=False, indent=1) + "\n```"


def shouting(obj: dict[str, Any]) -> dict[str, Any]:
    """The same conversation with other names, case and spacing: a duplicate."""
    msgs = [dict(m, name=(m["name"] + "x" if m["role"] == "user" else m["name"]),
                 content="  " + m["content"].upper().replace(" ", "  ") + "!")
            for m in obj["messages"]]
    return {"tags": obj["tags"], "messages": msgs}


def with_(obj: dict[str, Any], i: int, **changes: str) -> dict[str, Any]:
    msgs = [dict(m) for m in obj["messages"]]
    msgs[i].update(changes)
    return {"tags": obj["tags"], "messages": msgs}


@dataclass
class Teacher:
    script: list[Any]
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""


def serve(script: list[Any]) -> tuple[ThreadingHTTPServer, Teacher]:
    """Answers POST /v1/chat/completions with the next script item: a string is the message
    content; (status, text) an HTTP error; INTERRUPT interrupts the client, then answers."""
    state = Teacher(list(script))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                state.bodies.append(body)
                state.headers.append(dict(self.headers))
                item = state.script.pop(0) if state.script else (500, "script exhausted")
            if self.path != "/v1/chat/completions":
                item = (404, '{"error": "no such route"}')
            if item is INTERRUPT:
                _thread.interrupt_main()
                item = fenced(EN3)
            if isinstance(item, tuple):
                status, payload = item[0], item[1].encode()
            else:
                status = 200
                payload = json.dumps({
                    "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": item}}],
                }).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    state.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    return srv, state


@pytest.fixture
def teacher() -> Iterator[Any]:
    servers = []

    def start(script: list[Any]) -> Teacher:
        srv, state = serve(script)
        servers.append(srv)
        return state

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def write_config(path: Path, url: str, model: str = "teacher-7b") -> Path:
    path.write_text(f'[openai]\nbase_url = "{url}"\nmodel = "{model}"\n'
                    'api_key_env = "SYNTH_TEST_KEY"\ntimeout_seconds = 10\n', encoding="utf-8")
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_seed_mode_keeps_only_valid_conversations(
        tmp_path: Path, teacher: Any, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    t = teacher([
        fenced(EN),                                              # kept: syn-000001
        json.dumps(with_(EN2, 2, content="(silence)")),          # marker in text
        json.dumps(with_(EN2, 1, role="bot")),                   # wrong role
        json.dumps(shouting(EN)),                                # duplicate of the first
        '{"tags": ["x"], "messages": [{"role": "user", "name": "A", "content": "hi"}',  # not JSON
        json.dumps({"tags": [], "messages": EN["messages"][:4]}),  # too few user turns
        (500, "overloaded, try again"),                          # retried by the client
        json.dumps(ZH, ensure_ascii=False),                      # kept: syn-000002
    ])
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS), encoding="utf-8")
    cfg = write_config(tmp_path / "config.toml", t.url)
    out = tmp_path / "out" / "syn.jsonl"
    monkeypatch.setenv("SYNTH_TEST_KEY", "sekrit")
    rc = chimein(["--config", str(cfg), "data", "synth", "--out", str(out), "--n", "2",
                  "--seeds", str(seeds), "--temperature", "0.7", "--seed", "3"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    got = lines(out)
    assert [c["id"] for c in got] == ["syn-000001", "syn-000002"]
    assert got[0]["tags"] == ["engineering", "addressed", "synthetic", "en"]
    assert got[1]["tags"] == ["food", "addressed", "synthetic", "zh"]
    assert [m["content"] for m in got[0]["messages"]] == [m["content"] for m in EN["messages"]]
    loaded = read_file(out)
    assert not loaded.errors and not loaded.warnings and len(loaded.examples) == 2
    for reason in ("marker in text", "wrong role", "duplicate", "not JSON",
                   "too few user turns"):
        assert re.search(rf"^\s+{reason}\s+1$", cap.out, re.MULTILINE), (reason, cap.out)
    assert "accepted 2, rejected 5" in cap.out
    assert "1 retried after a server error" in cap.out
    assert f"chimein data check {out}" in cap.out
    assert len(t.bodies) == 8 and t.bodies[6] == t.bodies[7]  # the 500 was retried as is
    for body, headers in zip(t.bodies, t.headers):
        assert body["model"] == "teacher-7b" and body["temperature"] == 0.7
        assert headers.get("Authorization") == "Bearer sekrit"
        system, task = body["messages"]
        assert system["role"] == "system" and '"(silence)"' in system["content"]
        assert any(s in task["content"] for s in SEED_TEXTS), task["content"]
    assert chimein(["--config", str(cfg), "data", "check", str(out)]) == 0


def test_free_mode_topics_and_language(tmp_path: Path, teacher: Any,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    t = teacher([json.dumps(ZH, ensure_ascii=False), "<think>hmm</think>" + json.dumps(EN2)])
    cfg = write_config(tmp_path / "config.toml", "http://127.0.0.1:9/v1", model="")
    out = tmp_path / "free.jsonl"
    rc = chimein(["--config", str(cfg), "data", "synth", "--out", str(out), "--n", "1",
                  "--mode", "free", "--topics", "kubernetes, 咖啡", "--language", "en",
                  "--base-url", t.url, "--model", "other-model", "-q"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert [c["id"] for c in lines(out)] == ["syn-000001"]
    assert re.search(r"^\s+wrong language\s+1$", cap.out, re.MULTILINE)
    for body in t.bodies:
        task = body["messages"][1]["content"]
        assert body["model"] == "other-model" and body["temperature"] == 0.9
        assert "Language: English" in task and not any(s in task for s in SEED_TEXTS)
        assert re.search(r"Domain / topic: (kubernetes|咖啡)$", task, re.MULTILINE)


def test_interrupted_run_resumes_numbering(tmp_path: Path, teacher: Any,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    t = teacher([fenced(EN), INTERRUPT])
    out = tmp_path / "syn.jsonl"
    base = ["data", "synth", "--out", str(out), "--mode", "free", "--base-url", t.url,
            "--model", "m", "--language", "en"]
    assert chimein([*base, "--n", "3"]) == 130
    cap = capsys.readouterr()
    assert "interrupted" in cap.err and "accepted 1" in cap.out
    assert [c["id"] for c in lines(out)] == ["syn-000001"]
    with open(out, "a", encoding="utf-8") as f:  # a writer killed mid-line
        f.write('{"id": "syn-000002", "tags": [], "messa')
    t2 = teacher([json.dumps(EN), fenced(EN3), json.dumps(EN2)])
    base[base.index(t.url)] = t2.url
    assert chimein([*base, "--n", "3"]) == 0
    cap = capsys.readouterr()
    assert "already holds 1 conversation" in cap.out
    assert "removed an incomplete last line" in cap.err
    assert re.search(r"^\s+duplicate\s+1$", cap.out, re.MULTILINE)  # EN again, across the resume
    assert [c["id"] for c in lines(out)] == ["syn-000001", "syn-000002", "syn-000003"]
    loaded = read_file(out)
    assert not loaded.errors and len(loaded.examples) == 3
    assert chimein([*base, "--n", "2"]) == 0  # already enough: no request
    assert "nothing to do" in capsys.readouterr().out and len(t2.bodies) == 3


def test_errors_are_one_line(tmp_path: Path, teacher: Any,
                             capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    cfg = write_config(tmp_path / "config.toml", url)
    out = tmp_path / "o.jsonl"
    assert chimein(["--config", str(cfg), "data", "synth", "--out", str(out), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert url in err and "base_url under [openai]" in err

    cfg2 = write_config(tmp_path / "c2.toml", url, model="")
    assert chimein(["--config", str(cfg2), "data", "synth", "--out", str(out), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert "no teacher model" in err and len(err.strip().splitlines()) == 1

    t = teacher([(404, "The model `teacher-7b` does not exist. " + "x" * 400)])
    assert chimein(["--config", str(cfg), "data", "synth", "--out", str(out), "--n", "2",
                    "--base-url", t.url]) == 2
    err = capsys.readouterr().err.strip()
    assert "HTTP 404" in err and "does not exist" in err and len(err.splitlines()) == 1
    assert len(err) < 500 and not out.exists()  # nothing accepted: no file


def test_gives_up_after_consecutive_rejections(tmp_path: Path, teacher: Any,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    t = teacher(["sorry, I can't"] * 3)
    opts = SynthOptions(out=tmp_path / "g.jsonl", n=2, base_url=t.url, model="m", mode="free",
                        max_failures=3, backoff=0.0, progress=False)
    res = synthesize(opts)
    assert res.exit_code == 1 and res.rejected == {"not JSON": 3} and res.accepted == 0
    assert "generations were all rejected" in capsys.readouterr().err


def test_check_generation() -> None:
    msgs, tags, lang = check_generation("<think>plan</think>\n```JSON\n" + json.dumps(EN)
                                        + "\n```")
    assert tags == ["engineering", "addressed"] and lang == "en" and len(msgs) == 9
    assert extract_json('note: {"messages": []} ok') == {"messages": []}

    def reason(obj: Any) -> str:
        with pytest.raises(Rejected) as e:
            check_generation(obj if isinstance(obj, str) else json.dumps(obj,
                                                                         ensure_ascii=False))
        return e.value.reason

    assert reason(with_(EN, 5, content="(Response) 1 second")) == "marker in text"
    assert reason(with_(EN, 1, name="assistant")) == "wrong role"
    assert reason({"messages": [a("hi"), *EN2["messages"]]}) == "assistant first"
    assert reason({"messages": [*EN["messages"][:6], a("again"), *EN["messages"][6:]]}) \
        == "assistant after assistant"
    addressed_silent = [m for m in EN["messages"] if m["role"] == "user"]
    assert reason({"messages": addressed_silent}) == "addressed, no answer"
    one_speaker = [dict(m, name="Ana") for m in EN2["messages"]]
    assert reason({"messages": one_speaker}) == "too few speakers"
    assert reason({"messages": EN2["messages"] * 3}) == "too many user turns"
    assert reason("") == "empty answer"
    assert reason({"msgs": []}) == "not a conversation"
