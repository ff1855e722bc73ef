"""Shared fixtures: hermetic tiny tokenizers/models built in the test session, pinned threads."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@contextlib.asynccontextmanager
async def chimein_run(config: Path, secrets: dict[str, str],
                      *flags: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`chimein run` as a person starts it: the real command line in a process of its own,
    with `secrets` (tokens) in its environment; killed if the test leaves it running."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
               **secrets)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adapters.cli", *flags, "--config", str(config), "run", cwd=ROOT,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def sigterm(proc: asyncio.subprocess.Process) -> str:
    """Stop a `chimein_run` process as systemd does; its log (stderr)."""
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    return err.decode()

CORPUS = [
    "Ann: hello there, how is the deploy going?",
    "Bob: assistant, what is the HTTP status for too many requests?",
    "Cy: 助手，今天天气怎么样？我们下午开会。",
    "Dee: the build failed again on main, can someone look at CI?",
    "Eve: lol that meme is great 😂",
    "Fay: how many seconds are in three days? nobody knows",
    "Gus: 这个PR能merge吗，deploy 失败了",
    "Hal: 429 Too Many Requests. 259200 seconds.",
] * 40


@pytest.fixture(autouse=True, scope="session")
def _pin_threads() -> None:
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama-architecture model with a BPE tokenizer trained here (ChatML)."""
    from training.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "model", CORPUS, vocab_size=600,
                     hidden=32, layers=2, heads=4)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


class QueueAdapter:
    """A queue-based fake adapter: records what the core posts (errbot's TestBackend idea)."""

    platform = "test"

    def __init__(self, platform: str = "test") -> None:
        self.platform = platform
        self.sent: list = []
        self.typing_count = 0

    async def send(self, reply):  # type: ignore[no-untyped-def]
        self.sent.append(reply)
        return f"m{len(self.sent)}"

    @contextlib.asynccontextmanager
    async def typing(self, key):  # type: ignore[no-untyped-def]
        self.typing_count += 1
        yield


@pytest.fixture
def queue_adapter() -> QueueAdapter:
    return QueueAdapter()
