"""`amo`: the one command line that people, `dvc.yaml` and the Prefect flows all call."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
import yaml

app = typer.Typer(help="Train, validate, bundle and serve an Agentic Meta-Orchestrator.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Write or import data sets in amo's contracts.", no_args_is_help=True)
bundles_app = typer.Typer(help="Inspect the bundle registry.", no_args_is_help=True)
agents_app = typer.Typer(help="Change the agent catalogue.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(agents_app, name="agents")
app.add_typer(bundles_app, name="bundles")

_state: dict[str, Path | None] = {"params": Path("params.yaml"), "given": None}
REJECTED_EXIT = 3  # exit status when the promotion gate rejects a bundle (errors exit 1)


@app.callback()
def main(params: Path | None = typer.Option(None, "--params", "-p", help="Params file; default "
                                            "params.yaml (the runtime and registry commands also run "
                                            "without one: see `amo serve --help`)."),
         verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    _state["params"], _state["given"] = params or Path("params.yaml"), params
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "great_expectations", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                       "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
                       "TOKENIZERS_PARALLELISM": "false", "GX_ANALYTICS_ENABLED": "false"}.items():
        os.environ.setdefault(key, value)


def _params_file() -> Path:
    return _state["params"] or Path("params.yaml")


def _params() -> Any:
    from amo.config import load_params

    return load_params(_params_file())


def _raw_params() -> dict[str, Any]:
    return yaml.safe_load(_params_file().read_text(encoding="utf-8"))


def _settings(**options: Any) -> Any:
    """The runtime settings (amo.settings): options given here, then AMO_ variables, then the
    params file when there is one."""
    from amo.settings import load_settings

    return _run(lambda: load_settings(_state["given"], **options))


def _run(action: Callable[[], Any]) -> Any:
    """Run a command; a known failure prints its message (file, row, field...) and exits 1."""
    from amo.arms import ArmLoadError
    from amo.bundle import BundleError
    from amo.config import ConfigError
    from amo.extras import ExtraNotInstalled
    from amo.importers import SourceError
    from amo.locks import LockBusy
    from amo.models import ModelNotFoundError
    from amo.planner import PlannerFormatError
    from amo.routing import AgentError

    known: tuple[type[Exception], ...] = (ConfigError, BundleError, ModelNotFoundError,
                                          PlannerFormatError, ArmLoadError, SourceError, FileNotFoundError,
                                          KeyError, AgentError, LockBusy, ExtraNotInstalled)
    try:
        from amo.validate import DataValidationError

        known += (DataValidationError,)
    except ImportError:  # pragma: no cover
        pass
    try:
        return action()
    except known as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))


# -- data ---------------------------------------------------------------------------------------
@data_app.command("demo")
def data_demo(out: Path = typer.Option(Path("data"), help="Folder to write."),
              seed: int | None = typer.Option(None, help="Defaults to params.yaml data.seed.")) -> None:
    """Write the embedded demo copilot data set (deterministic for a seed)."""
    from amo.demo import write_demo_data

    counts = write_demo_data(out, seed if seed is not None else _params().data.seed)
    typer.echo(f"wrote demo copilot data to {out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


@data_app.command("import")
def data_import(name: str = typer.Argument(..., help="Data set: clinc150, amazon_htc, ultratool, "
                                                      "seal_tools, snips, canard."),
                source: Path = typer.Option(..., help="The published data set's folder "
                                                      "(e.g. ../shared/datasets/clinc150)."),
                out: Path | None = typer.Option(None, help="Folder to write; default imports/NAME."),
                seed: int | None = typer.Option(None, help="Split seed; defaults to data.seed.")) -> None:
    """Turn a public data set into amo's data contracts (agents, routing, traces, tasks)."""
    from amo.importers import import_dataset

    target = out or Path("imports") / name
    counts = _run(lambda: import_dataset(name, source, target,
                                         seed if seed is not None else _params().data.seed))
    typer.echo(f"imported {name} to {target}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


# -- agents -------------------------------------------------------------------------------------
@agents_app.command("add")
def agents_add(agent_id: str = typer.Argument(..., metavar="ID", help="New agent id."),
               description: str = typer.Option(..., help="What the agent does (one sentence or more)."),
               domain: str = typer.Option("", help="Optional domain."),
               tag: list[str] = typer.Option([], "--tag", help="A tag; repeat for more."),
               agents_file: Path | None = typer.Option(None, "--agents", help="Agents file to append to; "
                                                       "default: <data.dir>/agents.jsonl."),
               index: Path | None = typer.Option(None, help="Router agent index folder to re-embed; "
                                                 "default: train_router's output when it exists."),
               index_only: bool = typer.Option(False, help="Leave the agents file alone."),
               publish: bool = typer.Option(False, help="Then publish: promote the champion with the new "
                                                        "agent in its index (see `amo agents publish`).")) -> None:
    """Add an agent: append it to agents.jsonl and embed it into the router's agent index (the
    cheap index step), so it is routable without retraining; `--publish` serves it at once."""
    from amo.agents import add_agent, index_step_encoder
    from amo.data import Agent
    from amo.layout import stage_output

    params = _params()
    target = None if index_only else (agents_file or Path(params.data.dir) / "agents.jsonl")
    index_dir, onnx_dir = index, None
    if Path("dvc.yaml").is_file():  # in the project: the trained router's index and its ONNX export
        onnx_dir = _run(lambda: stage_output("export_router"))
        if index_dir is None:
            router_dir = _run(lambda: stage_output("train_router"))
            index_dir = router_dir if (router_dir / "agents.json").is_file() else None
    agent = Agent(id=agent_id, description=description, domain=domain, tags=tuple(tag))
    encoder = (_run(lambda: index_step_encoder(params.encoder, index_dir, onnx_dir))
               if index_dir is not None else None)
    result = _run(lambda: add_agent(params.data, agent, target, index_dir, encoder))
    typer.echo(json.dumps(result, ensure_ascii=False))
    data_dir = Path(params.data.dir)
    if publish:
        agents_publish()
    if target is not None and target.resolve().parent == data_dir.resolve():
        # The pipeline's agents changed: start the on-new-agent-data retrain when Prefect is up.
        _announce(data_dir, "amo agents add")


def _announce(folder: Path, why: str) -> dict[str, Any]:
    """Announce the data change (amo.orchestration.emit_data_updated) and say what happened."""
    from amo import orchestration

    sent = _run(lambda: orchestration.emit_data_updated(folder, Path("."), why=why))
    if sent["event_id"] is not None:
        typer.echo(f"data {folder} hash {sent['data_hash']}: event amo.data.updated {sent['event_id']} "
                   f"sent to {sent['api_url']}")
    elif sent.get("already_announced"):
        typer.echo(f"data {folder} hash {sent['data_hash']}: already announced or trained on, no event sent")
    return sent


@agents_app.command("publish")
def agents_publish() -> None:
    """Serve the agents file's agents without retraining: derive an index-only bundle from the
    champion (new descriptions embedded with its encoder), measure it on the current test data
    and promote it through the gate. Exits 3 when the gate rejects it."""
    from amo.orchestration import publish_index

    decision, markdown = _run(lambda: publish_index(Path("."), _params_file()))
    if decision is None:
        typer.echo(markdown)
        return
    typer.echo(str(decision))
    if not decision.accepted:
        raise typer.Exit(REJECTED_EXIT)


@data_app.command("add")
def data_add(routing: Path | None = typer.Option(None, help="New routing rows (JSON Lines, the routing "
                                                  "contract)."),
             traces: Path | None = typer.Option(None, help="New traces (JSON Lines, the trace contract)."),
             data_dir: Path | None = typer.Option(None, "--data", help="Default: params.yaml data.dir.")
             ) -> None:
    """Add new routing rows and traces to the data: checked by the validation suites against
    what the data holds, then split per agent into train/val/test (params.yaml data.routing_split,
    trace_split), so a new agent's first rows are measured too. Announces the change."""
    from amo.intake import add_rows

    if routing is None and traces is None:
        raise typer.BadParameter("give --routing and/or --traces")
    params = _params()
    folder = data_dir or Path(params.data.dir)
    report = _run(lambda: add_rows(params.data, folder, routing, traces))
    _echo_json(report)
    _announce(folder, "amo data add")


@data_app.command("harvest")
def data_harvest(since: str | None = typer.Option(None, help="Only decisions made at or after this ISO 8601 "
                                                   "time (2026-12-01 or 2026-12-01T08:00:00Z)."),
                 log_dir: Path | None = typer.Option(None, "--log", help="The decision log folder; default "
                                                     "AMO_DECISION_LOG, params.yaml serve.decision_log."),
                 data_dir: Path | None = typer.Option(None, "--data", help="Default: params.yaml data.dir."),
                 report: Path | None = typer.Option(None, help="Also write the report (JSON) here.")) -> None:
    """Turn the runtime's logged decisions with feedback into routing rows and traces: graded as
    the contracts grade them, deduplicated against the data, checked by the validation suites,
    split as `amo data add` splits, provenance in data/provenance/. Prints the report (JSON:
    rows in, appended, duplicates dropped, refused with reasons) and announces the change."""
    from amo.harvest import harvest, parse_time

    params = _params()
    folder = data_dir or Path(params.data.dir)
    configured = _settings().decision_log  # AMO_DECISION_LOG as the runtime reads it, else params.yaml
    log_folder = log_dir or (Path(configured) if configured else None)
    if log_folder is None:
        raise typer.BadParameter("no decision log: give --log (serve.decision_log / AMO_DECISION_LOG is off)")
    if since is not None:
        try:
            parse_time(since)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    result = _run(lambda: harvest(params.data, folder, log_folder, since))
    if report is not None:
        from amo.data import write_json

        write_json(report, result)
    _echo_json(result)
    if sum(result["appended"].values()):
        _announce(folder, "amo data harvest")


@data_app.command("update")
def data_update(data_dir: Path | None = typer.Option(None, "--data", help="Default: params.yaml data.dir.")
                ) -> None:
    """Announce changed data: emit the `amo.data.updated` Prefect event with the data's hash
    (starts the retrain/on-new-agent-data deployment)."""
    folder = data_dir or Path(_params().data.dir)
    sent = _announce(folder, "amo data update")
    if sent["event_id"] is None and not sent.get("already_announced"):
        typer.echo(f"data {folder} hash {sent['data_hash']}: not announced, PREFECT_API_URL is not set "
                   "(start a Prefect server, see README; the data sensor announces it later)")


# -- stages (dvc.yaml calls these, with every path written there once) ---------------------------
def _required(help_text: str) -> Any:
    return typer.Option(..., help=help_text)


@app.command()
def validate(data: Path = _required("Data folder."),
             report: Path = _required("Report file (every file, every problem)."),
             parts: Path = _required("Folder of per-consumer reports (router.json, tasks/<task>.json)."),
             docs: Path | None = typer.Option(None, help="great-expectations data docs folder."),
             partial: bool = typer.Option(False, help="A part of a data folder (e.g. an import without "
                                                      "traces): check the contract files it has, list the "
                                                      "absent ones.")) -> None:
    """Stage: check the data contracts with great-expectations suites."""
    from amo.stages import validate as stage

    result = _run(lambda: stage.run(_params().data, data, report, parts, docs, partial=partial))
    rows = sum(f["rows"] for f in result["files"].values())
    typer.echo(f"data valid: {len(result['files'])} files, {rows} rows"
               + (f"; absent: {', '.join(result['absent'])}" if result.get("absent") else "")
               + (f" (data docs: {docs / 'index.html'})" if docs else ""))


_EMBEDDINGS = typer.Option(None, help="Embedding store (the embed stage's output): texts it holds are "
                                       "not embedded again.")


@app.command()
def embed(data: Path = _required("Data folder."), out: Path = _required("Embedding store folder (kept between runs)."),
          metrics: Path = _required("Metrics file to write."),
          dask_address: str | None = typer.Option(None, help="Dask scheduler whose workers embed the new texts; "
                                                  "default: env AMO_DASK_ADDRESS, then orchestration.dask_address "
                                                  "(none: embed here).")) -> None:
    """Stage: embed every text of the data once into the embedding store (only new texts on a re-run)."""
    from amo.stages import embed as stage

    params = _params()
    address = dask_address or os.environ.get("AMO_DASK_ADDRESS") or params.orchestration.dask_address
    _echo_json(_run(lambda: stage.run(params.encoder, data, out, metrics, address)))


@app.command("train-router")
def train_router(data: Path = _required("Data folder."), out: Path = _required("Router folder to write."),
                 metrics: Path = _required("Metrics file to write."), embeddings: Path | None = _EMBEDDINGS,
                 plots: Path | None = typer.Option(None, help="Folder for the plots' data (loss.csv, margin.csv)."),
                 champion: Path | None = typer.Option(None, help="Router or bundle folder to warm-start from; "
                                                      "default: the registry's promoted bundle "
                                                      "(with router.warm_start.enabled).")
                 ) -> None:
    """Stage: fit the listwise router with its separator (warm-started from the champion's)."""
    from amo.stages import train_router as stage

    params = _params()
    if champion is None and params.router.warm_start.enabled:
        champion = _run(_promoted_bundle)
    _echo_json(_run(lambda: stage.run(params, data, out, metrics, embeddings, plots, champion)))


def _promoted_bundle() -> Path | None:
    """The current bundle folder of the registry `amo promote` and `amo serve` use (AMO_REGISTRY,
    else params.yaml; downloaded from a remote registry), None before the first promotion."""
    registry = _registry()
    return None if registry.current_id() is None else registry.current_path()


@app.command("export-router")
def export_router(router: Path = _required("Router folder (train-router's output)."),
                  out: Path = _required("ONNX folder to write."),
                  metrics: Path = _required("Metrics file to write.")) -> None:
    """Stage: export the router to ONNX and check it against torch."""
    from amo.stages import export_router as stage

    _echo_json(_run(lambda: stage.run(_params(), router, out, metrics)))


@app.command("finetune-arm")
def finetune_arm(task: str = typer.Argument(..., help="A task name from params.yaml arms.tasks."),
                 out: Path = _required("Arm folder to write."),
                 metrics: Path = _required("Metrics file to write."),
                 plot: Path | None = typer.Option(None, help="CSV of the loss per step (for dvc plots).")) -> None:
    """Stage: fine-tune one task's LoRA arm on the shared base model."""
    from amo.stages import finetune_arm as stage

    _echo_json(_run(lambda: stage.run(_params(), task, out, metrics, plot)))


@app.command("fit-planner")
def fit_planner(data: Path = _required("Data folder."), router: Path = _required("Router folder."),
                onnx: Path = _required("Router ONNX folder."), out: Path = _required("Planner folder to write."),
                metrics: Path = _required("Metrics file to write."), embeddings: Path | None = _EMBEDDINGS) -> None:
    """Stage: fit the planner's decision trees on the traces."""
    from amo.stages import fit_planner as stage

    _echo_json(_run(lambda: stage.run(_params(), data, router, onnx, out, metrics, embeddings)))


@app.command()
def evaluate(data: Path = _required("Data folder."), router: Path = _required("Router folder."),
             onnx: Path = _required("Router ONNX folder."), planner: Path = _required("Planner folder."),
             arms: Path = _required("Folder of the arms' metrics files."),
             out: Path = _required("Evaluation file to write."), embeddings: Path | None = _EMBEDDINGS,
             plot: Path | None = typer.Option(None, help="CSV of (actual, predicted) top agents (confusion plot).")
             ) -> None:
    """Stage: evaluate router, planner and arms on held-out data."""
    from amo.stages import evaluate as stage

    _echo_json(_run(lambda: stage.run(_params(), data, router, onnx, planner, arms, out, embeddings, plot)))


@app.command()
def bundle(router: Path = _required("Router folder."), onnx: Path = _required("Router ONNX folder."),
           planner: Path = _required("Planner folder."), arms: Path = _required("Arms folder."),
           evaluation: Path = _required("Evaluation file."), out: Path = _required("Bundle folder to write."),
           sign_key: Path | None = typer.Option(None, envvar="AMO_SIGNING_KEY", help="A PEM elliptic-curve "
                                                "private key: sign the manifest (amo.signing).")) -> None:
    """Stage: assemble the bundle and its manifest (signed with --sign-key / AMO_SIGNING_KEY)."""
    from amo.stages import bundle as stage

    manifest = _run(lambda: stage.run(_params(), _raw_params(), router, onnx, planner, arms, evaluation, out,
                                      sign_key))
    signed = f"signed by {manifest['signing']['key'][:19]}…" if manifest["signing"] else "unsigned"
    typer.echo(f"bundle {manifest['bundle_id']} written to {out} ({len(manifest['files'])} files, {signed})")


@app.command()
def plots(out: Path = typer.Option(Path("dvc_plots"), help="Folder for index.html.")) -> None:
    """Draw dvc.yaml's plots (router loss, margin trade-off, confusion matrix, arm losses) into one
    self-contained HTML page that renders offline (vega inlined, fetched once from npm)."""
    from amo.plots import PlotsError, show

    try:
        page = show(Path("."), out)
    except PlotsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"plots written to {page}")


# -- release ----------------------------------------------------------------------------------
def _registry() -> Any:
    """The registry AMO_REGISTRY names, else params.yaml's registry.path (no params file needed)."""
    return _settings().open_registry()


@app.command()
def promote(bundle_dir: Path | None = typer.Argument(None, metavar="BUNDLE",
                                                   help="Default: the bundle stage's output in dvc.yaml."),
            force: bool = typer.Option(False, help="Promote even if the gate fails."),
            report: Path | None = typer.Option(None, help="Write the decision as Markdown here."),
            shadow: bool = typer.Option(False, "--shadow", help="Do not promote: verify the bundle, copy it into "
                                        "the registry and make it the challenger the runtime scores in shadow "
                                        "on live prompts (gate.shadow_min_decisions).")) -> None:
    """Gate a candidate bundle against floors and the champion (both scored on the current test
    data), and the shadow check when gate.shadow_min_decisions is set; switch `current` if it
    passes. Exits 3 when the gate rejects it. With --shadow, make it the challenger instead."""
    from amo.orchestration import promote_bundle

    if shadow:
        from amo.layout import stage_output

        bundle_id = _run(lambda: _registry().shadow(bundle_dir or stage_output("bundle", Path("."))))
        typer.echo(f"challenger {bundle_id}: the runtime scores it in shadow at its next poll "
                   "(agreement in the decision log; `amo promote` then applies gate.shadow_min_decisions)")
        return
    decision, markdown = _run(lambda: promote_bundle(Path("."), bundle_dir, force, _params_file()))
    typer.echo(str(decision))
    if report is not None:
        report.write_text(markdown, encoding="utf-8")
    if not decision.accepted:
        raise typer.Exit(REJECTED_EXIT)


@app.command()
def rollback(to: str | None = typer.Option(None, help="Bundle id; default: the previous one.")) -> None:
    """Point `current` back at an earlier promoted bundle (works from an unreadable current.json
    or a torn history, naming what it skipped)."""
    typer.echo(f"current bundle is now {_run(lambda: _registry().rollback(to, say=_warn))}")


def _warn(note: str) -> None:
    typer.secho(f"warning: {note}", fg=typer.colors.YELLOW, err=True)


@bundles_app.command("list")
def bundles_list() -> None:
    """Promoted bundles, the current one marked."""
    registry = _registry()
    problem = registry.read_current()[1]
    if problem is not None:
        _warn(f"{problem}: no bundle is marked current (repair: `amo rollback --to BUNDLE_ID`)")
    for row in _run(registry.list):
        mark = "*" if row["current"] else " "
        if "problem" in row:
            typer.echo(f"{mark} {row['bundle_id']}  {row['problem']}")
            continue
        router = row["metrics"].get("router", {})
        typer.echo(f"{mark} {row['bundle_id']}  created {row['created']}  "
                   f"router acc {router.get('in_scope_accuracy', float('nan')):.3f}")


@bundles_app.command("gc")
def bundles_gc(keep: int = typer.Option(3, min=1, help="Bundles to keep besides the current one: those history "
                                                "switched to last."),
               dry_run: bool = typer.Option(False, "--dry-run", help="Only print what would be removed.")
               ) -> None:
    """Remove older bundles and the leftovers of cut-short promotions; the current bundle, the
    last KEEP and the history stay."""
    cleanup = _run(lambda: _registry().gc(keep, dry_run, say=_warn))
    kept = ", ".join(cleanup.kept) or "none"
    if not cleanup.removed:
        typer.echo(f"nothing to remove (kept {kept})")
        return
    for path in cleanup.removed:
        typer.echo(f"{'would remove' if dry_run else 'removed'} {path}")
    typer.echo(f"kept {kept}")


@bundles_app.command("verify")
def bundles_verify(bundle_id: str = typer.Argument(..., help="A bundle id, or a bundle folder.")) -> None:
    """Check every file of a bundle against its manifest."""
    from amo.bundle import verify_bundle

    folder, registry = Path(bundle_id), _registry()

    def check() -> Any:
        if not folder.is_dir():
            return registry.verify(bundle_id)
        manifest = verify_bundle(folder)
        registry.check_signed(folder)
        return manifest

    manifest = _run(check)
    signature = ", signature verified" if registry.verify_key else ""
    typer.echo(f"bundle {manifest['bundle_id']}: {len(manifest['files'])} files verified{signature}")


@app.command()
def serve(host: str | None = typer.Option(None, help="Default: AMO_HOST, serve.host (127.0.0.1)."),
          port: int | None = typer.Option(None, help="Default: AMO_PORT, serve.port (8000)."),
          poll_seconds: float | None = typer.Option(None, help="Default: AMO_POLL_SECONDS, serve.poll_seconds."),
          workers: int | None = typer.Option(None, help="Default: AMO_WORKERS, serve.workers (1).")) -> None:
    """Serve the promoted bundle over HTTP; a newly promoted bundle is verified, then swapped in.

    Every setting of params.yaml's serve section is also an AMO_ variable (AMO_REGISTRY,
    AMO_ARMS, AMO_MAX_NEW_TOKENS, AMO_GENERATION_QUEUE, ...; README "Release and runtime"), so
    it runs from any folder; params.yaml, when present, gives the defaults."""
    from amo.decisions import DecisionLog
    from amo.runtime import serve as run_server

    settings = _settings(host=host, port=port, poll_seconds=poll_seconds, workers=workers)
    decisions = DecisionLog.from_settings(settings)
    if decisions is not None:
        _run(decisions.check)  # here too, so an unwritable folder is one line and exit 1
    logged = (f"decisions logged in {settings.decision_log} (prompts {'too' if settings.log_prompts else 'hashed'})"
              if decisions is not None else "decision log off")
    typer.echo(f"amo runtime on http://{settings.host}:{settings.port} (docs: /docs), registry "
               f"{settings.registry}, {settings.workers} worker(s), arms {settings.arms}, {logged}", err=True)
    run_server(settings)


# -- serving from the promoted bundle -------------------------------------------------------
def _brain(bundle_dir: Path | None) -> Any:
    from amo.brain import Brain

    def load() -> Any:
        registry = _registry()
        path = bundle_dir or registry.current_path()
        registry.check_signed(path)
        return Brain(path)

    return _run(load)


BUNDLE_OPTION = typer.Option(None, "--bundle", help="Bundle folder; default: the promoted one.")


@app.command()
def route(prompt: str, bundle_dir: Path | None = BUNDLE_OPTION,
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Which agents answer PROMPT (or abstain), best first."""
    result = _brain(bundle_dir).route(prompt)
    if as_json:
        _echo_json(result.to_dict())
        return
    typer.echo(_format_route(result))


def _format_route(result: Any) -> str:
    if result.abstained:
        return f"route: abstain (out of scope; separator {result.separator:.3f})"
    agents = ", ".join(f"{a} ({s:.3f})" for a, s in result.agents)
    return f"route: {agents}   [separator {result.separator:.3f}]"


@app.command()
def plan(prompt: str, bundle_dir: Path | None = BUNDLE_OPTION,
         explain: bool = typer.Option(False, "--explain", help="Print the decision rules.")) -> None:
    """The ordered agent path the planner picks for PROMPT."""
    _, result = _brain(bundle_dir).plan(prompt)
    typer.echo("plan: " + (" -> ".join(result.path) if result.path else "abstain"))
    if explain:
        for step, rules in enumerate(result.rules, 1):
            typer.echo(f"step {step}:")
            for rule in rules:
                typer.echo(f"    {rule}")
        if result.choice:
            typer.echo("path choice:")
            for rule in result.choice:
                typer.echo(f"    {rule}")


@app.command()
def invoke(text: str = typer.Argument(..., metavar="INPUT"),
           arm: str | None = typer.Option(None, help="Arm name; none: the base model."),
           bundle_dir: Path | None = BUNDLE_OPTION,
           max_new_tokens: int | None = typer.Option(None)) -> None:
    """Run one arm (a LoRA adapter on the shared base model) on INPUT."""
    brain = _brain(bundle_dir)
    typer.echo(_run(lambda: brain.invoke([(arm, text)], max_new_tokens))[0])


@app.command()
def copilot(prompt: str, bundle_dir: Path | None = BUNDLE_OPTION,
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Route, plan and run the arms for PROMPT with the promoted bundle."""
    brain = _brain(bundle_dir)
    answer = _run(lambda: brain.copilot(prompt))
    if as_json:
        _echo_json({"bundle_id": brain.bundle_id, **answer.to_dict()})
        return
    typer.echo(f"bundle: {brain.bundle_id}")
    typer.echo(f"prompt: {prompt}")
    typer.echo(_format_route(answer.route))
    if answer.out_of_scope:
        typer.echo("answer: out of scope: no agent of this copilot handles it (no arm was called)")
        return
    typer.echo("plan:  " + (" -> ".join(answer.plan.path) if answer.plan.path else "abstain"))
    for step in answer.arm_outputs:
        typer.echo(f"arm {step['arm']} (for {step['agent']}): {step['output']}")
