"""`amo data harvest`: logged decisions with feedback into routing rows and traces.

    amo data harvest [--since 2026-12-01T00:00:00Z] [--log logs/decisions] [--data data]

Each decision with feedback (the latest feedback on it wins) becomes at most one routing row and
one trace, with the contracts' grades (the main agent 2, the others 1, as the demo data grades a
multi-agent prompt):

| feedback | routing row | trace |
| --- | --- | --- |
| ok | the served selection (best first); an abstained route: `{}` (out of scope confirmed) | with `path` |
| wrong + agents | those agents; `agents: []`: `{}` (out of scope) | with `path` |
| wrong, no agents | none: refused `no_correction` (the right agents are unknown, abstained or not) | with `path` |
| partial + agents | those agents (the runtime refuses partial without them) | with `path` |

A trace is `{prompt, path, outcome}` (outcome `success`, `abstained` for an empty path). Rows
whose prompt data/ already holds in any split (amo.validate's comparison key), or that another
harvested decision repeats, are dropped and counted. A decision naming an agent data/agents.jsonl
does not hold is refused with a line naming the request id and the agent. Only decisions logged
with their prompt (serve.log_prompts) can be harvested; the others are counted. The rest is
`amo data add`'s: checked by the validation suites against the data (nothing is written on any
problem), split per agent, under the same lock; each appended row's provenance (request id,
bundle id, outcome) goes to data/provenance/harvest-<time>.jsonl, since the routing and trace
contracts hold only their own fields.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from amo import data as contracts
from amo.config import DataParams
from amo.decisions import DECISIONS, FEEDBACK, latest_by_request, read_log
from amo.intake import add_checked, append_rows, data_lock
from amo.validate import _prompt_key as leakage_key  # the key validation compares splits by

PROVENANCE = "provenance"
KINDS = ("routing", "traces")


def parse_time(value: str) -> datetime:
    """An ISO 8601 time or date (UTC when it names no zone); ValueError naming the value."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {value!r} is not an ISO 8601 time (2026-12-01 or 2026-12-01T08:00:00Z)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def graded(agents: list[str]) -> dict[str, int]:
    """The contracts' grades for agents given main first: the first 2, the others 1."""
    ordered = list(dict.fromkeys(agents))
    return {agent: 2 if i == 0 else 1 for i, agent in enumerate(ordered)}


def corrected_labels(decision: dict[str, Any], feedback: dict[str, Any]) -> dict[str, int] | None:
    """The routing row's labels the feedback gives the decision, or None when it gives none."""
    outcome, agents = feedback.get("outcome"), feedback.get("agents")
    if outcome == "ok":
        return graded([a["id"] for a in (decision.get("route") or {}).get("agents", [])])
    if outcome in ("wrong", "partial") and agents is not None:
        return graded(list(agents))
    return None


def candidates(log_dir: Path, known_agents: set[str], since: datetime | None = None) -> dict[str, Any]:
    """Routing rows and traces from the log's decisions with feedback, before deduplication,
    each with its provenance; and what was refused or not harvestable."""
    decisions = latest_by_request(read_log(log_dir, DECISIONS))
    verdicts = latest_by_request(read_log(log_dir, FEEDBACK))
    rows: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {kind: [] for kind in KINDS}
    refused: list[dict[str, Any]] = []
    unlogged: list[str] = []
    rows_in = 0
    for request_id, feedback in sorted(verdicts.items(), key=lambda item: str(item[1].get("time", ""))):
        decision = decisions.get(request_id)
        if decision is None:
            refused.append({"request_id": request_id, "reason": "decision_not_in_log"})
            continue
        if since is not None and parse_time(str(decision.get("time"))) < since:
            continue
        rows_in += 1
        prompt = decision.get("prompt")
        if not isinstance(prompt, str):
            unlogged.append(request_id)
            continue
        labels = corrected_labels(decision, feedback)
        path = feedback.get("path")
        named = [*(labels or {}), *(path or [])]
        unknown = sorted({agent for agent in named if agent not in known_agents})
        if unknown:
            refused += [{"request_id": request_id, "reason": "unknown_agent", "agent": agent} for agent in unknown]
            continue
        source = {"request_id": request_id, "bundle_id": decision.get("bundle_id"),
                  "outcome": feedback.get("outcome"), "decided": decision.get("time"), "feedback": feedback.get("time"),
                  "prompt_sha256": decision.get("prompt_sha256")}
        if labels is None:
            refused.append({"request_id": request_id, "reason": "no_correction"})
        else:
            rows["routing"].append(({"prompt": prompt, "labels": labels}, source))
        if path is not None:
            rows["traces"].append(({"prompt": prompt, "path": list(path),
                                    "outcome": "success" if path else "abstained"}, source))
    return {"rows_in": rows_in, "rows": rows, "refused": refused, "prompt_not_logged": unlogged}


def _held_keys(data_dir: Path, kind: str) -> set[str]:
    """The comparison keys of every prompt in the data's `kind` files, all splits."""
    folder = data_dir / kind
    return {key for path in sorted(folder.glob("*.jsonl")) for row in contracts.iter_jsonl(path)
            if (key := leakage_key(row.get("prompt")))}


def new_rows(data_dir: Path, kind: str, rows: list[tuple[dict[str, Any], dict[str, Any]]]
             ) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], int]:
    """`rows` without those whose prompt the data holds or an earlier row repeats (the latest
    feedback is last, so it wins); and how many were dropped."""
    held = _held_keys(data_dir, kind)
    kept: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for row, source in rows:
        key = leakage_key(row["prompt"])
        if key and key not in held:
            kept.pop(key, None)
            kept[key] = (row, source)
    return list(kept.values()), len(rows) - len(kept)


def harvest(params: DataParams, data_dir: Path, log_dir: Path, since: str | None = None) -> dict[str, Any]:
    """Append the log's corrected decisions to the data (see the module docstring); the report
    says how many came in, were appended, dropped as duplicates, refused and why."""
    known = {agent.id for agent in contracts.read_agents(data_dir / "agents.jsonl")}
    found = candidates(log_dir, known, parse_time(since) if since else None)
    report: dict[str, Any] = {
        "log": str(log_dir), "data": str(data_dir), "since": since, "rows_in": found["rows_in"],
        "appended": dict.fromkeys(KINDS, 0), "duplicates_dropped": dict.fromkeys(KINDS, 0),
        "refused": found["refused"], "prompt_not_logged": len(found["prompt_not_logged"]),
        "refused_by_reason": dict(Counter(r["reason"] for r in found["refused"]))}
    if found["prompt_not_logged"]:
        report["prompt_not_logged_note"] = ("decisions logged without their prompt (serve.log_prompts off) "
                                            "cannot become rows; their feedback stays in the log")
    with data_lock(data_dir, "amo data harvest"), tempfile.TemporaryDirectory(prefix="amo-harvest-") as tmp:
        incoming: dict[str, Path] = {}
        provenance: list[dict[str, Any]] = []
        for kind in KINDS:
            kept, dropped = new_rows(data_dir, kind, found["rows"][kind])
            report["duplicates_dropped"][kind] = dropped
            if kept:
                incoming[kind] = Path(tmp) / f"harvested-{kind}.jsonl"
                contracts.write_jsonl(incoming[kind], [row for row, _ in kept])
                provenance += [{"kind": kind, **source} for _, source in kept]
        if not incoming:
            return report
        report["split"] = add_checked(params, data_dir, incoming)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        sidecar = data_dir / PROVENANCE / f"harvest-{stamp}.jsonl"
        sidecar.parent.mkdir(exist_ok=True)
        append_rows(sidecar, provenance)
    report["appended"] = {kind: sum(1 for p in provenance if p["kind"] == kind) for kind in KINDS}
    report["provenance"] = str(sidecar)
    return report
