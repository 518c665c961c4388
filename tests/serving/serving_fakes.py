"""Serving fixtures: a controllable fake engine and a real uvicorn server on a free loopback port.

The fake engine has the facade's methods (``stream``, ``stream_chat``, ``complete``, ``chat``, ``embed``,
``count_tokens``, ``max_context``, ``name``) and a fully predictable output: it "generates" the characters of
a reply chosen from the prompt, one character per token, so tests can compute the expected text, token counts
and finish reasons by hand. It records the sampling options it received and how far each generation got.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pytest

uvicorn = pytest.importorskip("uvicorn")

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@dataclass
class Chunk:
    text: str
    finish_reason: Optional[str]
    completion_tokens: int


@dataclass
class Done:
    text: str
    token_ids: list
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def reply_for(prompt: str, seed: Optional[int] = None, temperature: float = 1.0, length: int = 24) -> str:
    """The fake model's full reply to ``prompt``: greedy (temperature 0 or no seed) = a fixed echo; seeded
    sampling = letters drawn from ``random.Random(seed)``."""
    if temperature > 0 and seed is not None:
        rng = random.Random(seed)
        return "".join(rng.choice("abcdefghij ") for _ in range(length))
    tail = prompt[-8:].replace("\n", " ")
    return (f"echo[{tail}]" + "." * length)[:length]


def render_chat(messages: list[dict]) -> str:
    return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


class FakeLM:
    """A stand-in for :class:`lmforge.api.LM` with predictable output (see the module docstring)."""

    name = "fake-lm"
    max_context = 64

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[dict[str, Any]] = []
        self.tokens_generated = 0
        self.closed = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self.gate: Optional[threading.Event] = None  # when set, generations wait for it before each token

    # ---- generation ----
    def _generate(self, prompt: str, kw: dict[str, Any]) -> Iterator[Chunk]:
        self.calls.append(dict(kw, prompt=prompt))
        full = reply_for(prompt, kw.get("seed"), kw.get("temperature", 1.0))
        limit = kw.get("max_new_tokens", 100)
        stops = kw.get("stop", [])
        cut = min((full.find(s) for s in stops if s in full), default=-1)
        text, reason = (full[:cut], "stop") if cut >= 0 else (full, "stop")
        if len(text) > limit:
            text, reason = text[:limit], "length"
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            for i, ch in enumerate(text):
                if self.gate is not None:
                    self.gate.wait(10)
                if self.delay:
                    time.sleep(self.delay)
                with self._lock:
                    self.tokens_generated += 1
                last = i == len(text) - 1
                yield Chunk(ch, reason if last else None, i + 1)
            if not text:
                yield Chunk("", reason, 0)
        finally:
            with self._lock:
                self.active -= 1
                self.closed += 1

    def stream(self, prompt: str, **kw: Any) -> Iterator[Chunk]:
        return self._generate(prompt, kw)

    def stream_chat(self, messages: list[dict], **kw: Any) -> Iterator[Chunk]:
        return self._generate(render_chat(messages), kw)

    def _complete_one(self, prompt: str, kw: dict[str, Any]) -> Done:
        chunks = list(self._generate(prompt, kw))
        text = "".join(c.text for c in chunks)
        return Done(text, [ord(c) for c in text], chunks[-1].finish_reason, len(prompt), len(text))

    def complete(self, prompts: list[str], **kw: Any) -> list[Done]:
        return [self._complete_one(p, kw) for p in prompts]

    def chat(self, messages: list[dict], **kw: Any) -> Done:
        return self._complete_one(render_chat(messages), kw)

    def generate(self, prompt: str, **kw: Any) -> str:
        return self._complete_one(prompt, kw).text

    # ---- other capabilities ----
    def count_tokens(self, text: str) -> int:
        return len(text)

    def count_chat_tokens(self, messages: list[dict]) -> int:
        return len(render_chat(messages))

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = []
        for t in texts:
            digest = hashlib.sha256(t.encode()).digest()
            v = np.frombuffer(digest, dtype=np.uint8).astype(np.float32)[:16] - 127.5
            rows.append(v / np.linalg.norm(v))
        return np.stack(rows).astype(np.float32)


class FakeTranslator:
    """A stand-in for :class:`lmforge.api.Translator`: reverses each word order and records ``beam``."""

    name = "fake-mt"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def translate(self, texts: list[str], beam: int = 5, max_len: Optional[int] = None) -> list[str]:
        self.calls.append({"texts": list(texts), "beam": beam, "max_len": max_len})
        return [" ".join(reversed(t.split())) for t in texts]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real uvicorn server for ``app`` in a background thread, on a free 127.0.0.1 port, with the HTTP protocol
    ``lmforge serve`` uses (its writes coalesced per event-loop iteration, :mod:`lmforge.serving.transport`)."""

    def __init__(self, app: Any) -> None:
        from lmforge.serving.transport import http_protocol

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2,
                                http=http_protocol())
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., LiveServer]]:
    """``serve(engine, **create_app_kwargs)`` starts a live server; all are stopped at the end of the test."""
    from lmforge.serving.app import create_app

    stack = contextlib.ExitStack()

    def start(engine: Any, **kwargs: Any) -> LiveServer:
        return stack.enter_context(LiveServer(create_app(engine, **kwargs)))

    with stack:
        yield start


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


# ---------------------------------------------------------------- real tiny runs
TINY_CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
               "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n")
_TINY_MODELS = {
    "transformer": {"family": "transformer", "d_model": 32, "num_layers": 2, "block_size": 64,
                    "attention": {"num_heads": 2}},
    "lstm": {"family": "lstm", "embedding_dim": 32, "hidden_dim": 32, "num_layers": 2, "dropout": 0.0},
}


@pytest.fixture(scope="session")
def tiny_run_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two run folders written with the trainer's run-folder writer: an untrained 2-layer Transformer
    (d_model 32, context 64) and an untrained 2-layer LSTM (hidden 32), both on a char tokenizer."""
    import torch

    from lmforge.config import RunConfig
    from lmforge.models import build_model
    from lmforge.tokenizers import train_tokenizer
    from lmforge.training.checkpoint import save_run

    tokenizer = train_tokenizer("char", [TINY_CORPUS])
    root = tmp_path_factory.mktemp("serving-runs")
    out = {}
    for family, model in _TINY_MODELS.items():
        cfg = RunConfig.model_validate({"model": {**model, "vocab_size": tokenizer.vocab_size},
                                        "tokenizer": {"kind": "char"}, "out_dir": str(root / f"tiny-{family}")})
        torch.manual_seed(0)
        out[family] = save_run(cfg.out_dir, cfg, build_model(cfg.model), tokenizer)
    return out


@pytest.fixture(scope="session")
def tiny_lm(tiny_run_dirs: dict[str, Path]) -> Any:
    from lmforge.api import load

    return load(tiny_run_dirs["transformer"])


@pytest.fixture(scope="session")
def tiny_lstm(tiny_run_dirs: dict[str, Path]) -> Any:
    from lmforge.api import load

    return load(tiny_run_dirs["lstm"])


@contextlib.contextmanager
def lmforge_serve(run_dir: Path, *args: str) -> Iterator[str]:
    """The real ``lmforge serve RUN`` command on a free loopback port; yields its base URL."""
    import os
    import subprocess
    import sys

    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", "serve", str(run_dir), "--port", str(port),
                             "--log-level", "warning", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"lmforge serve exited: {proc.communicate()[1]}")
            try:
                httpx.get(url + "/health", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
