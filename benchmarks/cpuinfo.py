"""The CPU a benchmark ran on, printed next to every result: lscpu's model name and the flags
that decide CPU inference speed (never assume: bf16 was 8-70x slower than fp32 on one
AVX2-only EPYC seen here)."""

from __future__ import annotations

import subprocess
from typing import Any

SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16",
               "amx_int8", "amx_tile", "fma")


def cpu() -> dict[str, Any]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return {"model": "unknown (no lscpu)", "flags": []}
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(info.get("Flags", "").split())
    return {"model": info.get("Model name", "unknown").strip(),
            "cores": info.get("CPU(s)", "?").strip(),
            "flags": [f for f in SPEED_FLAGS if f in flags]}
