"""The bundle registry: bundles by id, an atomically switched `current` pointer, a history.

    registry/
      bundles/<bundle_id>/   verified copies of promoted bundles
      current.json           {"bundle_id": ...}: written to a temp file, fsynced, renamed
      history.jsonl          append-only: every promotion, rejection and rollback, with reasons
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amo.bundle import BundleError, verify_bundle
from amo.config import GateParams

CURRENT = "current.json"
HISTORY = "history.jsonl"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def atomic_write(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never a torn one, even across a crash."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def metric(metrics: dict[str, Any], dotted: str) -> float | None:
    value: Any = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) else None


@dataclass
class Decision:
    bundle_id: str
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    champion: str | None = None

    def __str__(self) -> str:
        verdict = "PROMOTED" if self.accepted else "REJECTED"
        lines = [f"{verdict} {self.bundle_id} (champion: {self.champion or 'none'})"]
        return "\n".join(lines + [f"  - {reason}" for reason in self.reasons])


def gate(candidate: dict[str, Any], champion: dict[str, Any] | None, params: GateParams) -> list[tuple[bool, str]]:
    """(passed, reason) per check: floors, then no regression beyond tolerance vs the champion."""
    checks = []
    for name, floor in sorted(params.floors.items()):
        value = metric(candidate, name)
        if value is None:
            checks.append((False, f"{name}: missing from the candidate's metrics"))
            continue
        checks.append((value >= floor, f"{name} = {value:.4f} {'>=' if value >= floor else '<'} floor {floor}"))
        best = metric(champion, name) if champion is not None else None
        if best is not None:
            ok = value >= best - params.tolerance
            checks.append((ok, f"{name} = {value:.4f} vs champion {best:.4f} "
                               f"({'within' if ok else 'beyond'} tolerance {params.tolerance})"))
    return checks


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.bundles = self.root / "bundles"

    def current_id(self) -> str | None:
        path = self.root / CURRENT
        if not path.is_file():
            return None
        return json.loads(path.read_text())["bundle_id"]

    def current_path(self) -> Path:
        bundle_id = self.current_id()
        if bundle_id is None:
            raise BundleError(f"registry {self.root}: nothing promoted yet (run `amo promote`)")
        return self.bundles / bundle_id

    def history(self) -> list[dict[str, Any]]:
        path = self.root / HISTORY
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _record(self, event: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / HISTORY, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": _now(), **event}, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _point_to(self, bundle_id: str) -> None:
        atomic_write(self.root / CURRENT, json.dumps({"bundle_id": bundle_id, "since": _now()}) + "\n")

    def promote(self, candidate: Path, params: GateParams, force: bool = False) -> Decision:
        """Verify, gate against floors and the champion, copy in, then switch `current`."""
        manifest = verify_bundle(candidate)
        bundle_id = manifest["bundle_id"]
        champion_id = self.current_id()
        champion = verify_bundle(self.bundles / champion_id)["metrics"] if champion_id else None
        checks = gate(manifest["metrics"], champion, params)
        accepted = force or all(ok for ok, _ in checks)
        reasons = [("ok: " if ok else "FAILED: ") + why for ok, why in checks]
        if force:
            reasons.append("forced: gate overridden by --force")
        decision = Decision(bundle_id, accepted, reasons, champion_id)
        if accepted:
            target = self.bundles / bundle_id
            if not target.exists():
                partial = self.bundles / f".{bundle_id}.partial"
                shutil.rmtree(partial, ignore_errors=True)
                shutil.copytree(candidate, partial)
                verify_bundle(partial)
                os.replace(partial, target)
            self._point_to(bundle_id)
        self._record({"action": "promote" if accepted else "reject", "bundle_id": bundle_id,
                      "previous": champion_id, "reasons": reasons})
        return decision

    def rollback(self, to: str | None = None) -> str:
        """Point `current` at `to`, or at the bundle promoted before the current one."""
        current = self.current_id()
        if to is None:
            promoted = [e["bundle_id"] for e in self.history() if e["action"] in ("promote", "rollback")]
            earlier = [b for b in reversed(promoted) if b != current]
            if not earlier:
                raise BundleError(f"registry {self.root}: no earlier bundle to roll back to")
            to = earlier[0]
        verify_bundle(self.bundles / to)
        self._point_to(to)
        self._record({"action": "rollback", "bundle_id": to, "previous": current, "reasons": []})
        return to

    def list(self) -> list[dict[str, Any]]:
        current = self.current_id()
        rows = []
        for path in sorted(self.bundles.glob("[!.]*")):
            manifest = json.loads((path / "manifest.json").read_text())
            rows.append({"bundle_id": manifest["bundle_id"], "created": manifest["created"],
                         "current": manifest["bundle_id"] == current, "metrics": manifest["metrics"]})
        return rows
