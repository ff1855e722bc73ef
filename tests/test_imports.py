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


# -- the three rings (DESIGN.md "Layout") ----------------------------------------------------
PACKAGES = ("bot", "adapters", "training", "benchmarks", "tests")
# what each ring may import of the project's own packages
ALLOWED = {"bot": {"bot"}, "training": {"bot", "training"},
           "adapters": {"bot", "training", "adapters"}}


def project_imports(path: Path) -> set[str]:
    """Dotted names of the project modules a file imports (anywhere in it, lazily too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] in PACKAGES}
    return out


def modules() -> dict[str, Path]:
    found = {}
    for pkg in ALLOWED:
        for f in (ROOT / pkg).rglob("*.py"):
            rel = f.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            found[".".join(parts)] = f
    return found


def test_each_ring_imports_only_what_is_below_it() -> None:
    for name, path in modules().items():
        ring = name.split(".")[0]
        for imp in project_imports(path):
            assert imp.split(".")[0] in ALLOWED[ring], \
                f"{path.relative_to(ROOT)} ({ring}/) imports {imp}"


def test_no_import_cycle_among_the_projects_modules() -> None:
    mods = modules()
    graph = {name: {i for i in project_imports(path) if i in mods and i != name}
             for name, path in mods.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
