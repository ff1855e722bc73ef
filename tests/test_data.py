"""training.data: reading JSONL with line numbers, stats, deterministic splits; `chimein data
check`; the starter build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.cli import main as chimein
from training.data import decision_points, detect_language, read_file, read_files, split, stats

GOOD_OBJ = {"id": "c1", "tags": ["en", "engineering", "addressed"], "messages": [
    {"role": "user", "name": "Ann", "content": "the deploy is stuck"},
    {"role": "user", "name": "Bob", "content": "assistant, what does HTTP 429 mean?"},
    {"role": "assistant", "name": "assistant", "content": "Too Many Requests: slow down."},
    {"role": "user", "name": "Ann", "content": "thanks"},
]}
GOOD_LIST = [
    {"role": "user", "name": "Cy", "content": "今天下午开会吗？"},
    {"role": "user", "name": "Dee", "content": "开，三点"},
    {"role": "user", "name": "Cy", "content": "好的"},
]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_both_line_forms_and_reports_every_bad_line(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "d.jsonl", [
        json.dumps(GOOD_OBJ),                                   # 1 ok (object)
        "{not json",                                            # 2 bad JSON
        json.dumps(GOOD_LIST, ensure_ascii=False),              # 3 ok (bare list)
        "",                                                     # 4 blank: ignored
        json.dumps([{"role": "robot", "content": "x"}]),        # 5 bad role
        json.dumps({"id": "x"}),                                # 6 no messages
        json.dumps([{"role": "assistant", "content": "hi"}]),   # 7 no user message
        json.dumps([{"role": "user", "name": "A", "content": 5}]),  # 8 content not a string
    ])
    with open(f, "ab") as fh:
        fh.write(b'[{"role": "user", "name": "A", "content": "\xff\xfe"}]\n')  # 9 not UTF-8
    got = read_file(f)
    assert [ex.line for ex in got.examples] == [1, 3]
    bad = {int(e.split(":")[1]) for e in got.errors}
    assert bad == {2, 5, 6, 7, 8, 9}
    assert all(e.startswith(f"{f}:") for e in got.errors)
    assert got.examples[0].id == "c1" and got.examples[0].tags[0] == "en"
    assert got.examples[1].id.startswith("sha-")  # stable id for a line without one


def test_missing_file_and_folder_are_reported_not_raised(tmp_path: Path) -> None:
    got = read_files([tmp_path / "nope.jsonl", tmp_path])
    assert not got.examples
    assert "no such file" in got.errors[0] and "folder" in got.errors[1]


def test_warnings_keep_the_line(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "w.jsonl", [json.dumps([
        {"role": "assistant", "content": "hello everyone"},
        {"role": "user", "name": "A", "content": "hi"},
        {"role": "assistant", "content": "one"},
        {"role": "assistant", "content": "two"},
    ])])
    got = read_file(f)
    assert len(got.examples) == 1 and not got.errors
    assert any("answers nobody" in w for w in got.warnings)
    assert any("merged" in w for w in got.warnings)
    turns = got.examples[0].turns
    assert [t.role for t in turns] == ["user", "assistant"] and turns[1].content == "one\ntwo"


def test_decision_points_and_stats_are_hand_counted(tmp_path: Path, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    f = write_lines(tmp_path / "s.jsonl", [json.dumps(GOOD_OBJ),
                                           json.dumps(GOOD_LIST, ensure_ascii=False)])
    exs = read_file(f).examples
    pts = decision_points(exs[0].turns)
    assert [(p.speaker, p.speak) for p in pts] == [("Ann", False), ("Bob", True),
                                                   ("Ann", False)]
    assert pts[1].answer == "Too Many Requests: slow down."
    from bot.render import Renderer

    r = Renderer(tiny_tokenizer)
    s = stats(exs, renderer=r)
    assert (s.conversations, s.user_turns, s.speak_points, s.silence_points) == (2, 6, 1, 5)
    assert s.addressed_turns == 1
    assert dict(s.languages) == {"en": 1, "zh": 1}
    assert dict(s.speakers) == {2: 2}
    encs = [r.encode(ex.turns) for ex in exs]
    assert s.tokens == sum(len(e.ids) for e in encs)
    assert s.loss_tokens == sum(sum(e.mask) for e in encs)


def test_language_detection() -> None:
    assert detect_language(["the build is red"]) == "en"
    assert detect_language(["今天下午开会吗", "这个PR能merge吗"]) == "zh"
    assert detect_language(["can we ship today?", "我觉得可以，明天再看 metrics 和 dashboard"]) \
        == "mixed"


def test_split_is_deterministic_stratified_and_order_free(tmp_path: Path) -> None:
    lines = []
    for i in range(40):
        lang = ["en", "zh", "mixed"][i % 3]
        lines.append(json.dumps({"id": f"c{i}", "tags": [lang], "messages": [
            {"role": "user", "name": "A", "content": f"message {i}"}]}))
    f = write_lines(tmp_path / "all.jsonl", lines)
    g = write_lines(tmp_path / "rev.jsonl", list(reversed(lines)))
    tr, va = split(read_file(f).examples, 0.1, seed=0)
    _tr2, va2 = split(read_file(g).examples, 0.1, seed=0)
    assert {e.id for e in va} == {e.id for e in va2}
    assert len(tr) + len(va) == 40 and not {e.id for e in tr} & {e.id for e in va}
    assert {e.language for e in va} == {"en", "zh", "mixed"}  # every language represented
    assert {e.id for e in split(read_file(f).examples, 0.1, seed=1)[1]} != {e.id for e in va}


def test_data_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            tiny_model_dir: Path) -> None:
    good = write_lines(tmp_path / "good.jsonl", [json.dumps(GOOD_OBJ)])
    assert chimein(["data", "check", str(good), "--tokenizer", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "conversations   1" in out and "user turns      3" in out and "tokens" in out
    mixed = write_lines(tmp_path / "mixed.jsonl", [json.dumps(GOOD_OBJ), "[oops"])
    assert chimein(["data", "check", str(mixed), "--json"]) == 1
    cap = capsys.readouterr()
    obj = json.loads(cap.out)
    assert obj["conversations"] == 1 and obj["speak_points"] == 1
    assert obj["errors"] and obj["errors"][0].startswith(f"{mixed}:2:")
    assert f"{mixed}:2:" in cap.err
    bad = write_lines(tmp_path / "bad.jsonl", ["nope"])
    assert chimein(["data", "check", str(bad)]) == 2


def test_starter_build_is_deterministic(tmp_path: Path) -> None:
    from training.starter.build import build

    parts = tmp_path / "parts"
    parts.mkdir()
    convs = []
    for i in range(30):
        lang = "zh" if i % 3 == 0 else "en"
        convs.append(json.dumps({"id": f"p{i}", "tags": [lang, "gaming", "never-speaks"],
                                 "messages": [{"role": "user", "name": "A",
                                               "content": f"hi {i}"}]}))
    write_lines(parts / "b.jsonl", convs[15:] + [convs[0]])  # a repeated id
    write_lines(parts / "a.jsonl", convs[:15] + ["{broken"])
    n_train, n_valid, problems = build(parts, tmp_path)
    assert (n_train, n_valid) == (27, 3)
    assert any("parts/a.jsonl:16" in p for p in problems)
    assert any("repeats" in p for p in problems)
    first = [(tmp_path / n).read_bytes() for n in ("train.jsonl", "valid.jsonl", "README.md")]
    build(parts, tmp_path)
    again = [(tmp_path / n).read_bytes() for n in ("train.jsonl", "valid.jsonl", "README.md")]
    assert first == again
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "| conversations | 27 | 3 | 30 |" in readme
    assert "| never-speaks | 27 | 3 | 30 |" in readme
    assert "| gaming | 27 | 3 | 30 |" in readme
