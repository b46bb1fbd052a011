"""What the Prefect flows do, as plain functions: read the DVC graph, run one stage, hold the
one-retrain-per-repository lock, apply params overrides, fingerprint the data and emit the
`amo.data.updated` event, push to the DVC remote, and write the Markdown reports.

The flows in `flows/` only wire these together; the Prefect tasks live in `amo.prefect_tasks`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml

from amo.layout import STATE_DIR
from amo.locks import LockBusy, file_lock

DATA_UPDATED = "amo.data.updated"
LOCK_FILE = "retrain.lock"
DATA_STATE = "data_state.json"
ANNOUNCE_LOCK = "announce.lock"  # held while a data version is checked, announced and recorded
TAIL_LINES = 25
REMOTE_NAME = "amo-remote"


class StageError(RuntimeError):
    """A DVC stage (or DVC command) that failed; the message names it and ends with DVC's output."""

    def __init__(self, stage: str, returncode: int, output: str) -> None:
        self.stage, self.returncode = stage, returncode
        self.tail = tail(output)
        super().__init__(f"stage {stage} failed (exit {returncode}); last lines:\n{self.tail}")


class RetrainBusy(LockBusy):
    """Another retrain holds this repository's lock; the message says who and since when."""


def tail(text: str, lines: int = TAIL_LINES) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


# -- the DVC graph ------------------------------------------------------------------------------
def _lookup(mapping: dict[str, Any], dotted: str) -> Any:
    value: Any = mapping
    for part in dotted.split("."):
        value = value[part]
    return value


def stage_groups(repo: Path = Path(".")) -> dict[str, list[str]]:
    """dvc.yaml's stages in file order (DVC's own topological order); a `foreach` stage
    expands to its members `name@key`, resolved from params.yaml like DVC does."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8"))
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    groups: dict[str, list[str]] = {}
    for name, stage in spec["stages"].items():
        if "foreach" not in stage:
            groups[name] = [name]
            continue
        items = stage["foreach"]
        if isinstance(items, str) and items.startswith("${") and items.endswith("}"):
            items = _lookup(params, items[2:-1])
        groups[name] = [f"{name}@{key}" for key in items]
    return groups


def stage_names(repo: Path = Path(".")) -> list[str]:
    """Every stage a full retrain runs, in order."""
    return [item for items in stage_groups(repo).values() for item in items]


def arm_stages(repo: Path, tasks: list[str] | None) -> list[str]:
    """The `finetune_arm@<task>` stages to run: all of them, or the named tasks (unknown names refused)."""
    members = stage_groups(repo).get("finetune_arm", [])
    if tasks is None:
        return members
    known = {m.split("@", 1)[1]: m for m in members}
    unknown = sorted(set(tasks) - set(known))
    if unknown:
        raise KeyError(f"unknown arm task(s) {', '.join(unknown)}; params.yaml arms.tasks has: "
                       f"{', '.join(sorted(known))}")
    return [known[t] for t in tasks]


# -- running DVC ----------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    """Stage commands run `amo` and `python` from PATH: the running interpreter's bin comes first."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def dvc(repo: Path, *args: str, label: str | None = None,
        on_line: Callable[[str], None] | None = None) -> str:
    """Run one DVC command in `repo`, passing each output line to `on_line` as it comes (a live
    log); raise StageError (named `label`) with DVC's output tail."""
    with subprocess.Popen(["dvc", *args], cwd=repo, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if on_line is not None and line.strip():
                on_line(line.rstrip("\n"))
        returncode = process.wait()
    output = "".join(lines)
    if returncode != 0:
        raise StageError(label or " ".join(args), returncode, output)
    return output


def run_stage(stage: str, repo: Path = Path("."), on_line: Callable[[str], None] | None = None) -> str:
    """`dvc repro --single-item STAGE`: runs it if its deps or params changed, else skips it."""
    return dvc(repo, "repro", "--single-item", stage, label=stage, on_line=on_line)


def track_data(repo: Path, data_dir: str) -> str:
    """`dvc add DATA`: record the data folder's current version in `<data>.dvc` (so it is pushed)."""
    dvc(repo, "add", data_dir, label=f"dvc add {data_dir}")
    outs = yaml.safe_load((repo / f"{data_dir}.dvc").read_text(encoding="utf-8"))["outs"]
    return outs[0]["md5"]


def use_remote(repo: Path, remote: str | None) -> str | None:
    """The DVC remote to use: None (the default of .dvc/config), a remote's name, or a URL
    (s3://, gs://, file://, a path), registered in .dvc/config.local as `amo-remote`."""
    if remote is None or ("://" not in remote and not remote.startswith(("/", "."))):
        return remote
    # DVC reads a local remote as a path; file:// is fsspec's spelling of the same thing.
    dvc(repo, "remote", "add", "--local", "--force", REMOTE_NAME, remote.removeprefix("file://"),
        label="dvc remote add")
    return REMOTE_NAME


def push(repo: Path, remote: str | None = None) -> str:
    """`dvc push --run-cache`: data, artifacts and the run cache (so a clone restores even the
    uncached metrics and bundle instead of re-running stages)."""
    name = use_remote(repo, remote)
    return dvc(repo, "push", "--run-cache", *(["--remote", name] if name else []), label="dvc push")


def pull(repo: Path, remote: str | None = None) -> str:
    """`dvc pull --run-cache`, the mirror of push: afterwards `dvc repro` restores, runs nothing."""
    name = use_remote(repo, remote)
    return dvc(repo, "pull", "--run-cache", *(["--remote", name] if name else []), label="dvc pull")


def apply_overrides(repo: Path, overrides: list[str]) -> dict[str, Any]:
    """Set `key=value` overrides in params.yaml with DVC's own `dvc exp run -S` code (same
    grammar, comments kept); refuse, and leave the file untouched, if the result is invalid.
    Returns the overridden keys with their new values."""
    from dvc.utils.hydra import apply_overrides as dvc_apply

    from amo.config import load_params

    if not overrides:
        return {}
    path = repo / "params.yaml"
    original = path.read_text(encoding="utf-8")
    try:
        dvc_apply(path, list(overrides))
        load_params(path)
    except Exception as exc:  # noqa: BLE001 (hydra, omegaconf and config errors alike restore the file)
        path.write_text(original, encoding="utf-8")
        raise ValueError(f"params override {overrides} refused: {exc}") from None
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {o.split("=", 1)[0].lstrip("+~"): _lookup(raw, o.split("=", 1)[0].lstrip("+~"))
            for o in overrides if "=" in o}


# -- one retrain at a time ---------------------------------------------------------------------
@contextmanager
def retrain_lock(repo: Path, timeout: float = 0.0, owner: str = "", poll: float = 0.5) -> Iterator[Path]:
    """Hold `.amo/retrain.lock` (an fcntl lock: released by the kernel if the holder dies).
    A second retrain waits up to `timeout` seconds, then raises RetrainBusy naming the holder."""
    path = repo / STATE_DIR / LOCK_FILE
    try:
        with file_lock(path, timeout, owner, poll):
            yield path
    except LockBusy as exc:
        raise RetrainBusy(f"another retrain is running in {repo.resolve()} (lock {path}, held by "
                          f"{exc.holder}); waited {timeout:g} s", path, exc.holder) from None


def concurrency_limit_name(repo: Path) -> str:
    """The Prefect global concurrency limit that lets one retrain of `repo` run at a time."""
    return "amo-retrain-" + re.sub(r"[^A-Za-z0-9_-]", "-", repo.resolve().name)


def _ensure_limit(name: str) -> None:
    """Create the global concurrency limit `name` with one slot, unless it exists."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # another retrain created it meanwhile
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


@contextmanager
def retrain_slot(repo: Path, timeout: float = 0.0, owner: str = "") -> Iterator[str]:
    """One retrain of `repo` at a time. With a Prefect server (PREFECT_API_URL), its global
    concurrency limit `amo-retrain-<repo>` (one slot, created on first use): it holds across
    machines and work pools. Without one, the file lock (`retrain_lock`). A second retrain waits
    up to `timeout` seconds, then raises RetrainBusy naming the limit or the lock. Yields what
    holds the slot."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        with retrain_lock(repo, timeout, owner) as path:
            yield f"file lock {path}"
        return
    from prefect.concurrency.sync import concurrency

    name = concurrency_limit_name(repo)
    _ensure_limit(name)
    with ExitStack() as stack:
        try:
            stack.enter_context(concurrency(name, occupy=1, timeout_seconds=max(timeout, 1.0), strict=True))
        except TimeoutError:
            raise RetrainBusy(f"another retrain is running in {repo.resolve()}: the Prefect global concurrency "
                              f"limit {name!r} (1 slot) is taken; waited {max(timeout, 1.0):g} s",
                              Path(name), "another flow run") from None
        yield f"Prefect global concurrency limit {name}"


# -- each retrain a DVC experiment ---------------------------------------------------------------
def experiment_name() -> str:
    """A new experiment's name: `retrain-<UTC time>` (DVC refuses a name twice)."""
    return time.strftime("retrain-%Y%m%dT%H%M%SZ", time.gmtime())


@contextmanager
def experiment(repo: Path, name: str) -> Iterator[str]:
    """While a retrain's stages run, the bundle stage names `name` in the manifest it builds
    (amo.bundle.experiment reads it); a plain `dvc repro` afterwards names none."""
    from amo.bundle import EXPERIMENT_FILE
    from amo.registry import atomic_write

    path = repo / EXPERIMENT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, name + "\n")
    try:
        yield name
    finally:
        path.unlink(missing_ok=True)


def save_experiment(repo: Path, name: str) -> str:
    """`dvc exp save`: the retrain's params, data version, dvc.lock and metrics as experiment
    `name`, so `dvc exp show` lists it and `dvc exp apply NAME` + `dvc checkout` (or `dvc pull`)
    restores a promoted bundle's exact inputs."""
    dvc(repo, "exp", "save", "--name", name, "--include-untracked", "metrics", label=f"dvc exp save {name}")
    return name


def push_experiment(repo: Path, name: str) -> str | None:
    """`dvc exp push origin NAME` when the repository has a git remote `origin`; else None."""
    remotes = subprocess.run(["git", "remote"], cwd=repo, capture_output=True, text=True, check=False).stdout.split()
    if "origin" not in remotes:
        return None
    return dvc(repo, "exp", "push", "origin", name, label=f"dvc exp push {name}")


# -- new agent data ------------------------------------------------------------------------------
def data_fingerprint(data_dir: Path) -> str:
    """The data version as DVC names it: the md5 `dvc add` would record in `<data_dir>.dvc` (the
    manifest's `data_hash`), computed through DVC's own state cache, so unchanged files are not
    re-read on every sensor tick. Changes when any file is added, removed or edited. A folder DVC
    does not track gets a sha256 over every file's relative path and content instead."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: data folder not found")
    tracked = data_dir.parent / f"{data_dir.name}.dvc"
    if tracked.is_file():
        from dvc.repo import Repo

        with Repo(Repo.find_root(str(data_dir.parent))) as repo:
            [stage] = repo.stage.collect(str(tracked))
            value = stage.outs[0].get_hash().value
            if value:
                return str(value)
    digest = hashlib.sha256()
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        content = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(f"{path.relative_to(data_dir).as_posix()}\0{content}\n".encode())
    return digest.hexdigest()


def _state_path(repo: Path) -> Path:
    return repo / STATE_DIR / DATA_STATE


def last_data_hash(repo: Path) -> str | None:
    """The data fingerprint last announced or trained on, or None."""
    path = _state_path(repo)
    return json.loads(path.read_text())["data_hash"] if path.is_file() else None


def record_data_hash(repo: Path, data_hash: str, why: str) -> None:
    from amo.registry import atomic_write

    path = _state_path(repo)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"data_hash": data_hash, "why": why,
                                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")


def emit_data_updated(data_dir: Path, repo: Path = Path("."), why: str = "amo data update") -> dict[str, Any]:
    """Send the `amo.data.updated` Prefect event with the data's fingerprint, wait until it is
    delivered, and record the fingerprint as announced, unless that version was already
    announced or trained on. Without PREFECT_API_URL nothing is sent. Check, send and record
    happen under one file lock: the data sensor and `amo data update` seeing the same change at
    once send one event (one retrain), not two. Returns the event's id (None if not sent), the
    hash, the API URL and `already_announced`."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        # No server to tell (an ephemeral API would vanish with this process): the data sensor
        # announces it once a server runs, since the hash is not recorded here.
        return {"event_id": None, "data_hash": data_fingerprint(data_dir), "api_url": None,
                "already_announced": False}
    with file_lock(repo / STATE_DIR / ANNOUNCE_LOCK, timeout=120.0, owner=why, poll=0.05):
        data_hash = data_fingerprint(data_dir)
        if data_hash == last_data_hash(repo):
            return {"event_id": None, "data_hash": data_hash, "api_url": PREFECT_API_URL.value(),
                    "already_announced": True}
        event = emit_event(DATA_UPDATED, resource={"prefect.resource.id": f"amo.data.{repo.resolve().name}",
                                                   "prefect.resource.name": str(data_dir)},
                           payload={"data_hash": data_hash, "data_dir": str(data_dir),
                                    "repo": str(repo.resolve()), "why": why})
        EventsWorker.drain_all(timeout=30)
        record_data_hash(repo, data_hash, why)
    return {"event_id": str(event.id) if event else None, "data_hash": data_hash,
            "api_url": PREFECT_API_URL.value(), "already_announced": False}


def data_changed(data_dir: Path, repo: Path = Path(".")) -> str | None:
    """The sensor's test: the new fingerprint if the data differs from the last announced one."""
    current = data_fingerprint(data_dir)
    return None if current == last_data_hash(repo) else current


# -- reports --------------------------------------------------------------------------------------
def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key in sorted(value):
            out.update(_flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def metrics_rows(metrics_dir: Path, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Every number in metrics/*.json (or the named files, e.g. `arms/x`) as {file, metric, value}."""
    files = ([metrics_dir / f"{n}.json" for n in names] if names is not None
             else sorted(metrics_dir.rglob("*.json")))
    rows: list[dict[str, Any]] = []
    for path in files:
        if not path.is_file():
            rows.append({"file": path.relative_to(metrics_dir).as_posix(), "metric": "(missing)", "value": ""})
            continue
        for key, value in _flatten(json.loads(path.read_text())).items():
            if isinstance(value, (int, float, str, bool)) and key != "files":
                rows.append({"file": path.relative_to(metrics_dir).with_suffix("").as_posix(), "metric": key,
                             "value": value})
    return rows


def metrics_markdown(metrics_dir: Path, title: str, names: list[str] | None = None) -> str:
    """A Markdown table of `metrics_rows`."""
    lines = [f"# {title}", "", "| file | metric | value |", "| --- | --- | --- |"]
    lines += [f"| {r['file']} | {r['metric']} | {_cell(r['value'])} |" for r in metrics_rows(metrics_dir, names)]
    return "\n".join(lines) + "\n"


def validation_markdown(report_path: Path) -> str:
    """Files, rows and result of the validate stage's great-expectations report."""
    report = json.loads(report_path.read_text())
    lines = ["# Data validation", "", (f"valid: **{report.get('ok')}**, "
                                      f"{len(report.get('problems', []))} problem(s)"), "",
             "| file | rows | expectations |", "| --- | --- | --- |"]
    lines += [f"| {name} | {info.get('rows', '')} | {info.get('expectations', '')} |"
              for name, info in sorted(report.get("files", {}).items())]
    problems = report.get("problems", [])
    if problems:
        lines += ["", "| file | row | field | problem |", "| --- | --- | --- | --- |"]
        lines += [f"| {p['file']} | {p['row'] or ''} | {p['field']} | {_cell(p['message'])} |"
                  for p in problems[:50]]
    return "\n".join(lines) + "\n"


def decision_markdown(decision: Any) -> str:
    """The promotion decision: verdict, each gate check, the metrics it compared next to the
    champion's, and per-agent results."""
    verdict = "UNCHANGED" if decision.unchanged else "PROMOTED" if decision.accepted else "REJECTED"
    lines = [f"# Promotion: {verdict}", "", (f"candidate `{decision.bundle_id}`, "
                                            f"champion `{decision.champion or 'none'}`"), ""]
    lines += [f"- {reason}" for reason in decision.reasons] or ["- no gate checks configured"]
    candidate = dict(decision.measured.get("candidate") or {})
    champion = dict(decision.measured.get("champion") or {})
    per_agent, champion_agents = candidate.pop("per_agent", {}), champion.pop("per_agent", {})
    cand, champ = _flatten(candidate), _flatten(champion)
    lines += ["", "| metric | candidate | champion |", "| --- | --- | --- |"]
    lines += [f"| {k} | {_cell(v)} | {_cell(champ.get(k, '—'))} |"
              for k, v in cand.items() if isinstance(v, (int, float))]
    if per_agent:
        lines += ["", "| agent | route top-1 | champion | plan contains | champion |",
                  "| --- | --- | --- | --- | --- |"]
        for agent, row in per_agent.items():
            other = champion_agents.get(agent, {})
            lines.append(f"| {agent} | {_cell(row.get('route_top1', '—'))} | {_cell(other.get('route_top1', '—'))} "
                         f"| {_cell(row.get('plan_contains', '—'))} | {_cell(other.get('plan_contains', '—'))} |")
    return "\n".join(lines) + "\n"


def promote_bundle(repo: Path, bundle_dir: Path | None = None, force: bool = False,
                   params_file: Path | None = None) -> tuple[Any, str]:
    """The one front door for promotion (`amo promote` and the promote flow): gate a bundle
    (default: the bundle stage's output in dvc.yaml) against the floors and the champion, both
    scored on the repository's current test data when it has test splits, and promote it into
    the registry (AMO_REGISTRY, else params.yaml's registry.path; a verify key from
    AMO_VERIFY_KEY or registry.verify_key); the decision and its Markdown report."""
    from functools import partial

    from amo.assessment import assess_bundle
    from amo.config import load_params
    from amo.layout import stage_output
    from amo.settings import load_settings

    params_file = params_file or repo / "params.yaml"
    params = load_params(params_file)
    registry = load_settings(params_file).open_registry(repo)
    if bundle_dir is None:
        bundle_dir = stage_output("bundle", repo)
    elif not bundle_dir.is_absolute():
        bundle_dir = repo / bundle_dir
    data = repo / params.data.dir
    tested = (data / "routing" / "test.jsonl").is_file() and (data / "traces" / "test.jsonl").is_file()
    decision = registry.promote(bundle_dir, params.gate, force=force,
                                assess=partial(assess_bundle, data=data) if tested else None,
                                extra_checks=_shadow_checks(repo, params.gate.shadow_min_decisions,
                                                            load_settings(params_file).decision_log))
    return decision, decision_markdown(decision)


def _shadow_checks(repo: Path, min_decisions: int, decision_log: str | None
                   ) -> Callable[[str], list[tuple[bool, str]]] | None:
    """The gate's shadow check on the decision log (amo.shadow), when gate.shadow_min_decisions asks for it."""
    if min_decisions <= 0:
        return None
    from amo.shadow import shadow_checks, shadow_summary

    folder = (repo / decision_log) if decision_log else None
    return lambda bundle_id: shadow_checks(shadow_summary(folder, bundle_id) if folder else None, min_decisions)


def publish_index(repo: Path, params_file: Path | None = None) -> tuple[Any, str]:
    """The cheap path (`amo agents publish` and the data event): validate the data, record its
    DVC version, derive an index-only bundle from the champion for the agents file's agents and
    the training split's prompts as examples, measure it on the current test data and promote it
    through the gate. No scorer or planner is retrained; the full retrain follows on the schedule."""
    from amo import data as contracts
    from amo.bundle import git_commit
    from amo.config import load_params
    from amo.layout import stage_output
    from amo.reindex import NothingToPublish, build_index_bundle, measure
    from amo.settings import load_settings
    from amo.validate import validate_data

    params = load_params(params_file or repo / "params.yaml")
    d = params.data
    data = repo / d.dir
    validate_data(data, min_description_chars=d.min_description_chars, max_description_chars=d.max_description_chars,
                  max_prompt_chars=d.max_prompt_chars, max_task_chars=d.max_task_chars)  # refused: nothing moves
    version = track_data(repo, d.dir) if (repo / f"{d.dir}.dvc").is_file() else None
    registry = load_settings(params_file or repo / "params.yaml").open_registry(repo)
    out = stage_output("bundle", repo).with_name("index-bundle")
    try:
        build_index_bundle(registry.current_path(), contracts.read_agents(data / "agents.jsonl"),
                           contracts.read_routing(data / "routing" / "train.jsonl"), out,
                           data_hash=version, git_commit=git_commit(), classifier_c=params.router.classifier_c,
                           column_min_examples=params.router.column_min_examples if params.router.shot_columns
                           else None)
    except NothingToPublish as exc:
        return None, f"nothing to publish: {exc}"
    measure(out, data)
    sign_key = os.environ.get("AMO_SIGNING_KEY")
    if sign_key:  # a new bundle: signed as `amo bundle` signs, when a signing key is configured
        from amo.signing import sign_bundle

        sign_bundle(out, Path(sign_key))
    return promote_bundle(repo, out, params_file=params_file)
