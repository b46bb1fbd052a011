"""Prefect flows: thin wiring over amo.orchestration and the DVC graph (read from dvc.yaml, never copied).

    python flows/retrain.py                              # one retrain against PREFECT_API_URL (or ephemeral)
    python flows/retrain.py --tasks query_rewrite --no-promote -S router.epochs=20

One flow per concern (validate, train-router, export-router, finetune-arms, fit-planner, evaluate,
bundle, promote); `retrain` runs them in dvc.yaml's stage order under the repository's retrain lock,
then promotes through the gate and pushes to the DVC remote. Each stage is `dvc repro --single-item`,
so DVC still skips what did not change.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import State, flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Failed

from amo import orchestration as orch
from amo.config import OrchestrationParams, load_params
from amo.layout import stage_option
from amo.prefect_tasks import arm_task_runner, finetune_arm, stage_task


def _settings(repo: str) -> OrchestrationParams:
    return load_params(Path(repo) / "params.yaml").orchestration


def _stage(repo: str, stage: str, retries: int | None = None) -> str:
    o = _settings(repo)
    runner = stage_task.with_options(retries=o.stage_retries if retries is None else retries,
                                     retry_delay_seconds=o.retry_delay_seconds,
                                     timeout_seconds=o.stage_timeout_seconds)
    return runner(stage, repo)


def _report(repo: str, key: str, title: str, names: list[str]) -> None:
    create_markdown_artifact(orch.metrics_markdown(Path(repo) / "metrics", title, names), key=key,
                             description=title)


@flow(name="validate")
def validate_data(repo: str = ".") -> dict[str, Any]:
    """Check the data contracts (never retried: bad data stays bad); the summary is an artifact."""
    report = Path(repo) / "metrics" / "validation.json"
    try:
        _stage(repo, "validate", retries=0)
    finally:
        if report.is_file():
            create_markdown_artifact(orch.validation_markdown(report), key="amo-validation",
                                     description="data validation")
        docs = stage_option("validate", "--docs", Path(repo).resolve())  # where great-expectations wrote them
        if docs is not None and (docs := docs / "index.html").is_file():
            create_link_artifact(docs.as_uri(), link_text="data docs", key="amo-data-docs",
                                 description="great-expectations data docs of this validation")
    return json.loads(report.read_text())


@flow(name="embed")
def embed(repo: str = ".") -> None:
    """Embed the texts the embedding store lacks (only new rows after the first run)."""
    _stage(repo, "embed")
    _report(repo, "amo-embed", "Embedding store", ["embed"])


@flow(name="train-router")
def train_router(repo: str = ".") -> None:
    _stage(repo, "train_router")
    _report(repo, "amo-train-router", "Router training", ["train_router"])


@flow(name="export-router")
def export_router(repo: str = ".") -> None:
    _stage(repo, "export_router")
    _report(repo, "amo-export-router", "Router ONNX export", ["export_router"])


@flow(name="finetune-arms")
def finetune_arms(repo: str = ".", tasks: list[str] | None = None) -> list[str]:
    """One `finetune_arm@<task>` task run per arm, fanned out on the configured task runner."""
    o = _settings(repo)
    stages = orch.arm_stages(Path(repo), tasks)
    arm = finetune_arm.with_options(retries=o.stage_retries, retry_delay_seconds=o.retry_delay_seconds,
                                    timeout_seconds=o.arm_timeout_seconds)
    with arm_task_runner(o) as runner:
        futures = [runner.submit(arm, {"stage": stage, "repo": repo}) for stage in stages]
        for future in futures:
            future.result()
    _report(repo, "amo-arms", "LoRA arms", [f"arms/{s.split('@', 1)[1]}" for s in stages])
    return stages


@flow(name="fit-planner")
def fit_planner(repo: str = ".") -> None:
    _stage(repo, "fit_planner")
    _report(repo, "amo-fit-planner", "Planner", ["fit_planner"])


@flow(name="evaluate")
def evaluate(repo: str = ".") -> None:
    _stage(repo, "evaluate")
    _report(repo, "amo-evaluation", "Held-out evaluation", ["evaluation"])


@flow(name="bundle")
def bundle(repo: str = ".") -> None:
    _stage(repo, "bundle")


def _decided(decision: Any, markdown: str, key: str) -> dict[str, Any] | State[Any]:
    """The promotion decision as an artifact, and as the run's result: a rejection ends the run
    Failed with the gate's reasons, so it never passes for a success."""
    create_markdown_artifact(markdown, key=key, description="promotion decision")
    get_run_logger().info("%s", decision)
    result = {"bundle_id": decision.bundle_id, "accepted": decision.accepted, "champion": decision.champion,
              "reasons": decision.reasons}
    if not decision.accepted:
        failed = "; ".join(r.removeprefix("FAILED: ") for r in decision.reasons if r.startswith("FAILED"))
        return Failed(message=f"bundle {decision.bundle_id} rejected by the gate: {failed}", data=result)
    return result


@flow(name="promote")
def promote(repo: str = ".", bundle: str | None = None, force: bool = False) -> dict[str, Any] | State[Any]:
    """Gate a candidate bundle (default: the bundle stage's output) against the floors and the
    champion, both scored on the current test data."""
    decision, markdown = orch.promote_bundle(Path(repo), Path(bundle) if bundle else None, force=force)
    return _decided(decision, markdown, "amo-promotion")


@flow(name="publish-index")
def publish_index(repo: str = ".") -> dict[str, Any] | State[Any]:
    """The cheap path: the champion with the data's agents in its index (no retraining),
    measured and promoted through the gate."""
    decision, markdown = orch.publish_index(Path(repo))
    if decision is None:
        get_run_logger().info("%s", markdown)
        return {"published": False, "why": markdown}
    return _decided(decision, markdown, "amo-publish-index")


# Which concern flow runs a dvc.yaml stage; a stage missing here still runs, as a plain stage task.
CONCERNS: dict[str, Callable[[str], object]] = {
    "validate": validate_data, "embed": embed, "train_router": train_router, "export_router": export_router,
    "fit_planner": fit_planner, "evaluate": evaluate, "bundle": bundle}


@flow(name="retrain")
def retrain(repo: str = ".", tasks: list[str] | None = None, promote_bundle: bool = True,
            overrides: list[str] | None = None, data_hash: str | None = None,
            push: bool | None = None) -> dict[str, Any] | State[Any]:
    """The whole pipeline in dvc.yaml's order, one retrain per repository at a time.

    tasks: arms to fine-tune (default all); overrides: `key=value` as for `dvc exp run -S`, kept in
    params.yaml like `dvc exp run` does; data_hash: the fingerprint an `amo.data.updated` event
    announced; push: `dvc push` afterwards (default params.yaml orchestration.push)."""
    root, log = Path(repo), get_run_logger()
    o = _settings(repo)
    with orch.retrain_slot(root, o.lock_timeout_seconds, owner=f"flow run {flow_run.get_id()}") as slot:
        log.info("one retrain at a time: holding the %s", slot)
        changed = orch.apply_overrides(root, overrides or [])
        if changed:
            log.info("params overrides applied to params.yaml: %s", changed)
        params = load_params(root / "params.yaml")
        data_dir = params.data.dir
        trained_on = orch.data_fingerprint(root / data_dir)
        if data_hash and data_hash != trained_on:
            log.warning("event announced data %s; training on the data now present, %s", data_hash, trained_on)
        ran = []
        with orch.experiment(root, orch.experiment_name()) as experiment:  # named in the bundle's manifest
            for group, stages in orch.stage_groups(root).items():
                if group == "finetune_arm":
                    ran += finetune_arms(repo, tasks)
                    continue
                if group in CONCERNS:
                    CONCERNS[group](repo)
                else:
                    _stage(repo, group)
                ran += stages
                if group == "validate" and (root / f"{data_dir}.dvc").is_file():
                    # Only data that passed validation is versioned: a refused row never reaches
                    # data.dvc, so `dvc checkout` cannot bring it back over the user's fix.
                    log.info("data version %s", orch.track_data(root, data_dir))
        orch.save_experiment(root, experiment)
        log.info("saved as DVC experiment %s (dvc exp show; dvc exp apply %s restores its inputs)",
                 experiment, experiment)
        promotion = promote(repo, return_state=True) if promote_bundle else None
        pushed = o.push if push is None else push
        if pushed:
            orch.push(root, params.orchestration.remote)
            if orch.push_experiment(root, experiment) is None:
                log.info("experiment %s kept locally: the git repository has no remote 'origin'", experiment)
        orch.record_data_hash(root, trained_on, "retrain")
    create_markdown_artifact(orch.metrics_markdown(root / "metrics", "Retrain: all metrics"),
                             key="amo-retrain", description="metrics of this retrain")
    create_table_artifact(orch.metrics_rows(root / "metrics"), key="amo-retrain-metrics",
                          description=f"every metric of this retrain (DVC experiment {experiment})")
    decision = None if promotion is None else promotion.result(raise_on_failure=False)
    result = {"stages": ran, "data_hash": trained_on, "overrides": changed, "experiment": experiment,
              "promotion": decision, "pushed": pushed}
    if promotion is not None and promotion.is_failed():
        # The retrain ran, but its bundle did not ship: a failed run, not a quiet success.
        return Failed(message=f"retrain finished but was not promoted: {promotion.message}", data=result)
    return result


@flow(name="on-new-data")
def on_new_data(repo: str = ".", data_hash: str | None = None) -> Any:
    """What new agent data starts: the cheap path first (a new agent is served within a minute),
    then the full retrain, which promotes the retrained bundle if it passes the gate."""
    published = publish_index(repo, return_state=True)
    retrained = retrain(repo, data_hash=data_hash, return_state=True)
    result = {"publish_index": published.result(raise_on_failure=False),
              "retrain": retrained.result(raise_on_failure=False)}
    failed = [f"{name}: {state.message}" for name, state in (("publish-index", published), ("retrain", retrained))
              if state.is_failed()]
    return Failed(message="; ".join(failed), data=result) if failed else result


@flow(name="data-sensor")
def data_sensor(repo: str = ".") -> str | None:
    """Emit `amo.data.updated` when the data folder's fingerprint differs from the last one
    announced or trained on, so new data dropped in place starts a retrain with no extra step."""
    root = Path(repo)
    data_dir = root / load_params(root / "params.yaml").data.dir
    changed = orch.data_changed(data_dir, root)
    if changed:
        sent = orch.emit_data_updated(data_dir, root, why="data-sensor")
        if sent["already_announced"]:  # `amo data update` (or another tick) announced it meanwhile
            get_run_logger().info("new data %s: already announced, no event sent", changed)
            return None
        get_run_logger().info("new data %s: event %s sent", changed, sent["event_id"])
    return changed


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run the retrain flow once.")
    parser.add_argument("--repo", default=".")
    parser.add_argument("--tasks", default=None, help="Comma-separated arm tasks; default all.")
    parser.add_argument("--no-promote", action="store_true")
    parser.add_argument("--no-push", action="store_true")
    parser.add_argument("-S", "--set-param", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    print(json.dumps(retrain(repo=args.repo, tasks=args.tasks.split(",") if args.tasks else None,
                             promote_bundle=not args.no_promote, overrides=args.overrides,
                             push=False if args.no_push else None), indent=2, default=str))
