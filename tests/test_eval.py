"""training.evaluate: hand-counted metrics, the replay's p_silence is the engine's, baselines,
threshold sweep, plot and `chimein eval --json`."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from adapters.cli import main as chimein
from bot.config import GenerationSettings
from bot.engine.fake import ScriptedEngine
from bot.engine.transformers_backend import TransformersEngine
from bot.message import Turn
from training.data import read_file
from training.evaluate import Point, best_threshold, evaluate, plot_pr, pr_curve, score

# Hand-counted fixture. The scripted engine says p_silence = 0.1 when the newest message ends
# with "?" (it speaks at threshold 0.5), else 0.9 (silent). Per user turn: gold / predicted /
# addressed by the wake-word rule:
#   C1 Ann "hi all"                     silent / silent / no    TN
#      Bob "assistant, what is 2+2?"    speak  / speak  / yes   TP
#      Ann "thanks"                     silent / silent / no    TN
#      Cy  "anyone free for lunch?"     silent / speak  / no    FP
#   C2 Dee "助手，现在几点"             speak  / silent / yes   FN  (missed address)
#      Eve "how many km in a mile?"     speak  / speak  / no    TP  (a chime-in)
#      Eve "ok"                         silent / silent / no    TN
#   C3 Fay "my assistant manager is out today?"  silent / speak / no   FP (hard negative)
#      Gus "hey assistant summarize this"        speak / silent / yes  FN (missed address)
# -> 9 user turns, 4 gold speak points, TP 2, FP 2, FN 2, TN 3, 3 addressed, 2 missed.
FIXTURE = [
    {"id": "c1", "tags": ["en"], "messages": [
        {"role": "user", "name": "Ann", "content": "hi all"},
        {"role": "user", "name": "Bob", "content": "assistant, what is 2+2?"},
        {"role": "assistant", "name": "assistant", "content": "4."},
        {"role": "user", "name": "Ann", "content": "thanks"},
        {"role": "user", "name": "Cy", "content": "anyone free for lunch?"}]},
    {"id": "c2", "tags": ["mixed"], "messages": [
        {"role": "user", "name": "Dee", "content": "助手，现在几点"},
        {"role": "assistant", "name": "assistant", "content": "我看不到时钟。"},
        {"role": "user", "name": "Eve", "content": "how many km in a mile?"},
        {"role": "assistant", "content": "About 1.6 km."},
        {"role": "user", "name": "Eve", "content": "ok"}]},
    [{"role": "user", "name": "Fay", "content": "my assistant manager is out today?"},
     {"role": "user", "name": "Gus", "content": "hey assistant summarize this"},
     {"role": "assistant", "content": "Sure: Fay's manager is out."}],
]


def fixture_file(tmp_path: Path) -> Path:
    f = tmp_path / "fixture.jsonl"
    f.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in FIXTURE),
                 encoding="utf-8")
    return f


def question_script(turns: Sequence[Turn]) -> float:
    last = [t for t in turns if t.role == "user"][-1]
    return 0.1 if (last.content or "").rstrip().endswith("?") else 0.9


def test_counts_match_the_hand_counted_fixture(tmp_path: Path) -> None:
    exs = read_file(fixture_file(tmp_path)).examples
    rep = evaluate(ScriptedEngine(question_script), exs, threshold=0.5)
    m = rep.rows["model"]
    assert (m.user_turns, m.gold_speak_points, m.silent_points, m.addressed_turns) == \
        (9, 4, 5, 3)
    assert (m.tp, m.fp, m.fn, m.tn, m.missed_addresses) == (2, 2, 2, 3, 2)
    assert m.precision == 0.5 and m.recall == 0.5 and m.f1 == 0.5
    assert m.balanced_accuracy == pytest.approx((0.5 + 3 / 5) / 2)
    assert m.false_interjection_rate == pytest.approx(2 / 5)
    assert m.missed_address_rate == pytest.approx(2 / 3)
    d = rep.rows["deployed"]  # the bot answers addressed turns whatever the model says
    assert (d.tp, d.fp, d.fn, d.tn, d.missed_address_rate) == (4, 2, 0, 3, 0.0)
    s = rep.rows["always_silent"]
    assert (s.tp, s.fp, s.fn, s.tn) == (0, 0, 4, 5)
    assert s.precision is None and s.recall == 0.0 and s.f1 == 0.0
    assert s.balanced_accuracy == 0.5 and s.missed_address_rate == 1.0
    a = rep.rows["answer_when_addressed"]
    assert (a.tp, a.fp, a.fn, a.tn) == (3, 0, 1, 5)
    assert a.f1 == pytest.approx(6 / 7) and a.balanced_accuracy == pytest.approx(0.875)
    # sweep: speaking on everything (t just above 0.9) gives the best F1, 8/13
    assert m.best_threshold is not None
    assert m.best_threshold["f1"] == pytest.approx(8 / 13)
    assert 0.9 < m.best_threshold["threshold"] < 0.9 + 1e-6
    assert "prompted_base" not in rep.rows


def test_json_has_the_documented_keys(tmp_path: Path) -> None:
    exs = read_file(fixture_file(tmp_path)).examples
    rep = evaluate(ScriptedEngine(question_script), exs, threshold=0.5,
                   base_engine=ScriptedEngine(lambda turns: 0.0))
    obj = json.loads(json.dumps(rep.as_json()))
    for k in ("user_turns", "gold_speak_points", "tp", "fp", "fn", "tn", "precision", "recall",
              "f1", "balanced_accuracy", "false_interjection_rate", "missed_address_rate",
              "best_threshold", "latency_ms", "baselines", "deployed", "threshold"):
        assert k in obj, k
    assert obj["tp"] == 2 and obj["baselines"]["answer_when_addressed"]["tp"] == 3
    base = obj["baselines"]["prompted_base"]  # p_silence 0 everywhere: always speaks
    assert (base["tp"], base["fp"], base["fn"], base["tn"]) == (4, 5, 0, 0)


def test_pr_curve_and_best_threshold_by_hand() -> None:
    pts = [Point(0, i, False, g, p, p < 0.5) for i, (p, g) in
           enumerate([(0.1, True), (0.2, False), (0.3, True), (0.8, False), (0.9, False)])]
    curve = pr_curve(pts)
    assert [round(c[0], 6) for c in curve] == [0.0, 0.15, 0.25, 0.55, 0.85, 0.9]
    assert curve[0][1] is None and curve[0][2] == 0.0  # nothing predicted: precision undefined
    assert curve[3][1:3] == (2 / 3, 1.0)
    bt = best_threshold(pts)
    assert bt["threshold"] == pytest.approx(0.55) and bt["f1"] == pytest.approx(0.8)
    assert score(pts).best_threshold == bt


def test_replayed_p_silence_is_what_the_engine_computes(tmp_path: Path, tiny_lm,  # type: ignore[no-untyped-def]
                                                        tiny_tokenizer) -> None:
    exs = read_file(fixture_file(tmp_path)).examples
    gen = GenerationSettings(max_new_tokens=4, temperature=0.0)
    eng = TransformersEngine(tiny_lm, tiny_tokenizer, generation=gen)
    rep = evaluate(eng, exs, threshold=0.5)
    assert len(rep.points) == 9
    check = TransformersEngine(tiny_lm, tiny_tokenizer, generation=gen)
    for pt in rep.points:
        turns = exs[pt.conversation].turns
        users = [i for i, t in enumerate(turns) if t.role == "user"]
        upto = turns[: users[pt.turn] + 1]  # the gold history and this user turn, no cache
        full = check.score_silence(upto)
        assert pt.p_silence is not None
        assert math.isclose(pt.p_silence, full, rel_tol=1e-4), (pt, full)
        assert pt.pred == (pt.p_silence < 0.5)
    assert rep.rows["model"].latency_ms is not None


def test_plot_writes_a_png(tmp_path: Path) -> None:
    exs = read_file(fixture_file(tmp_path)).examples
    rep = evaluate(ScriptedEngine(question_script), exs, threshold=0.5)
    out = plot_pr(rep, tmp_path / "pr.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_command_json_and_prompted_base(tmp_path: Path, tiny_model_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    f = fixture_file(tmp_path)
    code = chimein(["eval", "--model", str(tiny_model_dir), "--data", str(f), "--json",
                    "--base", str(tiny_model_dir), "--plot", str(tmp_path / "p.png")])
    assert code == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["user_turns"] == 9 and obj["gold_speak_points"] == 4
    assert obj["tp"] + obj["fp"] + obj["fn"] + obj["tn"] == 9
    base = obj["baselines"]["prompted_base"]
    assert base is not None and base["user_turns"] == 9
    assert obj["baselines"]["always_silent"]["fn"] == 4
    assert (tmp_path / "p.png").exists()
    assert chimein(["eval", "--model", str(tmp_path / "missing"), "--data", str(f)]) == 2
