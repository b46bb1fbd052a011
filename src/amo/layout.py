"""Where the pipeline's outputs live, read from dvc.yaml (the one place that writes them), for
the commands that are not stages: `amo agents add` finds the router's index, `amo promote` and
the flows find the bundle."""

from __future__ import annotations

from pathlib import Path

import yaml

# The project's own state (locks, the data event's last state, the running experiment's name):
# not data, not an artifact, never versioned.
STATE_DIR = ".amo"


def stage_output(stage: str, repo: Path = Path(".")) -> Path:
    """The first output of `stage` in `repo`/dvc.yaml, relative to `repo`."""
    spec_file = repo / "dvc.yaml"
    if not spec_file.is_file():
        raise FileNotFoundError(f"{spec_file}: not found (run from the project folder, or name the path)")
    stages = (yaml.safe_load(spec_file.read_text(encoding="utf-8")) or {}).get("stages") or {}
    if stage not in stages:
        raise KeyError(f"{spec_file}: no stage {stage!r}")
    outs = stages[stage].get("outs") or []
    if not outs:
        raise KeyError(f"{spec_file}: stage {stage!r} has no outs")
    first = outs[0]
    return repo / (next(iter(first)) if isinstance(first, dict) else first)


def stage_option(stage: str, flag: str, repo: Path = Path(".")) -> Path | None:
    """The path after `flag` (e.g. `--docs`) in `stage`'s command in `repo`/dvc.yaml, relative to
    `repo`; None when the command does not pass it."""
    import shlex

    stages = (yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages") or {}
    words = shlex.split(str((stages.get(stage) or {}).get("cmd", "")))
    return repo / words[words.index(flag) + 1] if flag in words[:-1] else None
