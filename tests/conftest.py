"""Shared fixtures: hermetic tiny tokenizers/models built in the test session, pinned threads."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

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
