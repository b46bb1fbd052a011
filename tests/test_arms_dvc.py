"""`dvc.yaml` retrains only the arm whose own data or params changed (real DVC, a temp git repo)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, restored
from test_end_to_end import run

pytestmark = pytest.mark.slow  # real `dvc repro` with LoRA training
ARM_STAGES = {"finetune_arm@product_extraction", "finetune_arm@query_rewrite"}


def changed_stages(repo: Path) -> set[str]:
    return set(json.loads(run(repo, "dvc", "status", "--json").stdout or "{}"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, tiny_lm: Path) -> Path:
    """The project's validate and finetune_arm stages, demo data, tiny arms, after one `dvc repro`."""
    repo = tmp_path_factory.mktemp("arms_repo")
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    pipeline["stages"] = {k: v for k, v in pipeline["stages"].items() if k in ("validate", "finetune_arm")}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base_model"] = {"path": str(tiny_lm), "gguf_file": None}
    for task in params["arms"]["tasks"].values():
        task.update(steps=2, eval_examples=1, max_new_tokens=2, batch_size=2)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".gitignore").write_text("/data\n/artifacts\n/metrics\n")
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    run(repo, "dvc", "config", "core.analytics", "false")
    run(repo, "amo", "data", "demo", "--out", "data")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "tiny arms")
    run(repo, "dvc", "repro")
    assert changed_stages(repo) == set()
    return repo


def test_changed_params_of_one_task_retrain_that_arm_only(repo: Path) -> None:
    """A new learning rate for query_rewrite marks finetune_arm@query_rewrite, and nothing else, to rerun."""
    original = (repo / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["arms"]["tasks"]["query_rewrite"]["lr"] = 0.003
    try:
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert changed_stages(repo) == {"finetune_arm@query_rewrite"}
        dry = run(repo, "dvc", "repro", "--dry").stdout
        assert "Running stage 'finetune_arm@query_rewrite'" in dry
        assert "Running stage 'finetune_arm@product_extraction'" not in dry
    finally:
        (repo / "params.yaml").write_text(original)
    assert changed_stages(repo) == set()


def test_new_rows_in_one_task_retrain_that_arm_only(repo: Path) -> None:
    """A new training row for product_extraction reruns validation, after which only
    finetune_arm@product_extraction is out of date: the other arm's and the router's validation
    reports (what train_router depends on) are unchanged."""
    train = repo / "data/tasks/product_extraction/train.jsonl"
    other = repo / "metrics/validation/tasks/query_rewrite.json"
    router = repo / "metrics/validation/router.json"
    before, router_before = other.read_text(), router.read_text()
    # The row, validate's new outputs and its dvc.lock entry are undone after, so other tests find
    # the repository up to date.
    with restored(repo, "data/tasks/product_extraction/train.jsonl", "metrics/validation.json",
                  "metrics/validation", "dvc.lock"):
        with open(train, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"input": "blue kettle under $30", "output": '{"item": "kettle"}'}) + "\n")
        assert {"validate", "finetune_arm@product_extraction"} <= changed_stages(repo)
        run(repo, "dvc", "repro", "validate")
        assert other.read_text() == before and router.read_text() == router_before
        assert json.loads(router_before)["files"]
        assert changed_stages(repo) == {"finetune_arm@product_extraction"}
    assert changed_stages(repo) == set()
