"""Keeps the layering honest: bot/ imports no platform library; heavy ML libraries only where
they belong (DESIGN.md, STYLE.md #4)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PLATFORM = {"slack_bolt", "slack_sdk", "discord", "aiohttp"}
HEAVY = {"torch", "transformers", "peft", "openvino", "optimum", "bitsandbytes"}


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(top-level module, imported at module level?) for every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for n in names:
            out.append((n.split(".")[0], id(node) in top))
    return out


def test_bot_never_imports_platform_libraries() -> None:
    for f in (ROOT / "bot").rglob("*.py"):
        for mod, _ in imports_of(f):
            assert mod not in PLATFORM, f"{f.relative_to(ROOT)} imports {mod}"


def test_heavy_libraries_only_lazily_inside_the_engine() -> None:
    for f in (ROOT / "bot").rglob("*.py"):
        in_engine = "engine" in f.relative_to(ROOT).parts
        for mod, module_level in imports_of(f):
            if mod in HEAVY:
                assert in_engine, f"{f.relative_to(ROOT)} imports {mod} outside bot/engine"
                assert not module_level, f"{f.relative_to(ROOT)} imports {mod} eagerly"


def test_trl_only_in_training() -> None:
    for pkg in ("bot", "adapters"):
        for f in (ROOT / pkg).rglob("*.py"):
            assert "trl" not in {m for m, _ in imports_of(f)}, f


def test_importing_bot_loads_no_heavy_module() -> None:
    code = ("import sys, bot.wiring, bot.core, bot.engine, bot.render, bot.policy, bot.config; "
            "print(sorted(m for m in ('torch','transformers','peft','trl','slack_bolt',"
            "'discord') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
