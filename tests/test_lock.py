"""The committed dvc.lock is the one `make demo` writes for this code: a fresh clone with
`dvc pull` then finds every stage unchanged. When a stage's code or params change, re-run the
demo's stages (`dvc repro`) and commit dvc.lock and metrics/ with the change."""

from __future__ import annotations

import hashlib
from typing import Any

import yaml
from conftest import ROOT

REFRESH = "the committed dvc.lock is stale: run `dvc repro` (make demo) and commit dvc.lock and metrics/"


def _lock() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]


def _stages() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _lookup(params: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        params = params[part]
    return params


def test_every_stage_is_locked_with_the_code_it_lists() -> None:
    """Each stage (each arm task) is in the lock, with the same source files as dvc.yaml's deps,
    each hashing as the file does now."""
    lock, params = _lock(), yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in _stages().items():
        names = [f"{name}@{task}" for task in params["arms"]["tasks"]] if "foreach" in stage else [name]
        listed = {d for d in (stage.get("do") or stage)["deps"] if d.startswith("src/")}
        for locked in names:
            assert locked in lock, f"stage {locked} is not in dvc.lock: {REFRESH}"
            deps = {d["path"]: d["md5"] for d in lock[locked]["deps"] if d["path"].startswith("src/")}
            assert set(deps) == listed, f"{locked}: dvc.yaml and dvc.lock list other code: {REFRESH}"
            for path, md5 in deps.items():
                now = hashlib.md5((ROOT / path).read_bytes()).hexdigest()
                assert now == md5, f"{locked}: {path} changed: {REFRESH}"


def test_locked_params_are_the_params_now() -> None:
    """The params each stage recorded in dvc.lock are params.yaml's values now."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in _lock().items():
        for key, value in _flatten(stage.get("params", {}).get("params.yaml", {})).items():
            assert _same(_lookup(params, key), value), f"{name}: params.yaml {key} differs from dvc.lock: {REFRESH}"


def _same(a: Any, b: Any) -> bool:
    """Equal as values: DVC writes `2e-05` into dvc.lock, which YAML 1.1 (PyYAML) reads as a string."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, str) != isinstance(b, str):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return False
    return bool(a == b)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Top-level keys as dvc.lock writes them: a dotted key (`router.min_k`) or a section (`router`)."""
    return {f"{prefix}{k}": v for k, v in value.items()}


def test_metrics_are_committed_beside_the_lock() -> None:
    """Every metrics file the lock records exists in the checkout, so `dvc metrics diff` reads it."""
    for name, stage in _lock().items():
        for out in stage.get("outs", []):
            if out["path"].startswith("metrics/") and out["path"].endswith(".json"):
                assert (ROOT / out["path"]).is_file(), f"{name}: {out['path']} is not committed: {REFRESH}"
