"""The generation process: where the runtime's /invoke and /copilot arms run (amo.runtime.GenerationPool).

torch generating in the server process held the GIL and a core that routing needed (route p99
during a 512-token SmolLM2 generation: 1.99x of routing alone, 2 cores). In its own spawned
process, with `serve.generation_threads` torch threads, generation shares only the CPU. The
server sends each job as one of the functions below with plain arguments (a bundle folder,
rows); this process loads that bundle's arms once (re-hashed against its manifest, the base
model against the hash the manifest names) and keeps the last bundle's loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_loaded: tuple[str, Any] | None = None  # (bundle folder, its ArmServer)


def start(threads: int, nice: int = 0) -> None:
    """Run in the process before its first job: torch gets `threads` intra-op threads, or every
    core but one, so routing keeps a core (routing itself runs one thread per batch). In the
    generation process, `nice` lowers its CPU priority (serve.generation_nice): when the cores are
    busy, the scheduler runs a waiting route before more tokens (a 512-token answer is seconds
    long, a route milliseconds)."""
    import importlib.util

    if nice:
        os.nice(nice)
    if importlib.util.find_spec("torch") is None:  # amo[arms] missing: each job says so (ExtraNotInstalled)
        return
    import torch

    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) - 1))


def arms_of(bundle: str) -> Any:
    """The ArmServer of the bundle in folder `bundle`, loaded on first use; another bundle's
    arms are dropped first (one base model in memory)."""
    global _loaded
    if _loaded is None or _loaded[0] != bundle:
        from amo.brain import load_arms
        from amo.bundle import RUNTIME, read_manifest

        _loaded = None
        path = Path(bundle)
        _loaded = (bundle, load_arms(path, read_manifest(path), json.loads((path / RUNTIME).read_text())))
    return _loaded[1]


def preload(bundle: str) -> str:
    """Load the bundle's arms now (serve.arms eager); BundleError when they fail their checksums."""
    arms_of(bundle)
    return bundle


def invoke(bundle: str, rows: list[tuple[str | None, str]], max_new_tokens: int | None = None) -> list[str]:
    """One batch of (arm or None for the base model, input) rows through the bundle's arms."""
    return [str(output) for output in arms_of(bundle).invoke(rows, max_new_tokens)]
