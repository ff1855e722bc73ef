"""`make demo` end to end in its quick form: train from scratch, table, replay, next steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_eval import FIXTURE
from tests.test_train import CONVS


@pytest.mark.slow
def test_demo_quick_runs_every_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.demo import main

    starter = tmp_path / "starter"
    starter.mkdir()
    (starter / "train.jsonl").write_text(
        "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in CONVS * 3), "utf-8")
    (starter / "valid.jsonl").write_text(
        "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in FIXTURE), "utf-8")
    out = tmp_path / "tiny-demo"
    assert main(["--quick", "--starter", str(starter), "--output", str(out),
                 "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    for step in ("== 1.", "== 2.", "== 3.", "== 4."):
        assert step in printed
    assert "baseline: answer only when addressed" in printed
    assert "=== conversation 0" in printed and "p_silence=" in printed
    assert "model.path" in printed or "path = " in printed
    assert (out / "config.json").exists() and (out / "metadata.json").exists()
