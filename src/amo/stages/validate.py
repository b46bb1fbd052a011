"""Stage `validate`: check the data contracts with great-expectations suites.

    amo validate --data data --report metrics/validation.json --parts metrics/validation
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amo.config import DataParams
from amo.data import write_json
from amo.validate import validate_data


def run(params: DataParams, data: Path, report: Path, parts: Path, docs: Path | None = None,
        partial: bool = False) -> dict[str, Any]:
    """Validate `data`, write the whole report and small per-consumer parts; raise
    DataValidationError (file, row, field) on a broken contract. `partial`: see validate_data."""
    result = validate_data(data, tasks=None, min_description_chars=params.min_description_chars,
                           max_description_chars=params.max_description_chars,
                           max_prompt_chars=params.max_prompt_chars, max_task_chars=params.max_task_chars,
                           report_path=report, docs_dir=docs, partial=partial)
    # Small reports per consumer: the router's (agents + routing) and one per task folder. Each
    # training stage depends on its own, so new rows in one task's data do not retrain the
    # router or the other arms.
    root = data.name

    def part(path: Path, *prefixes: str) -> None:
        files = {k: v for k, v in result["files"].items() if k.startswith(prefixes)}
        write_json(path, {"ok": result["ok"], "files": files})

    part(parts / "router.json", f"{root}/agents.jsonl", f"{root}/routing/")
    for folder in sorted(p for p in (data / "tasks").glob("*") if p.is_dir()):
        part(parts / "tasks" / f"{folder.name}.json", f"{root}/tasks/{folder.name}/")
    return result
