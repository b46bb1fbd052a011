"""A bundle: one directory with everything the runtime serves, and a manifest that pins it.

`manifest.json` holds the bundle id, created time, git commit, data hash, params, metrics, amo
version, the pretrained models named and hashed, and the sha256 of every other file. Nothing in a
bundle is pickled: ONNX, safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

import amo
from amo.config import Params
from amo.layout import STATE_DIR
from amo.models import resolve_base_model, sha256_file
from amo.onnx_encoder import ENCODER_FILES
from amo.routing import Classifier, read_margin

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # a signed bundle's signature of manifest.json (amo.signing); not in `files`
RUNTIME = "runtime.json"
FORMAT_VERSION = 1
# A bundle id names a folder in the registry: a plain name, never a path ("..", "/", ".hidden").
BUNDLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# In a manifest's metrics: the bundle whose arm stages measured the arm scores, when the arms are
# byte-identical copies of that bundle's (an index-only bundle carries its parent's arms).
ARMS_MEASURED_IN = "arms_measured_in"
# The champion's ranker as a warm start: weights, layout, cross-fit state (amo.ranker) and lineage
# (amo.stages.train_router); names written here so that serving never imports torch's ranker.
WARM_START_FILES = ("ranker.safetensors", "ranker.json", "crossfit.safetensors", "lineage.json")


class BundleError(ValueError):
    """A bundle that is incomplete, altered, or not a bundle; the message names the file."""


def check_bundle_id(bundle_id: object, where: str) -> str:
    """`bundle_id` when it is a plain name (letters, digits, `.`, `_`, `-`; at most 128
    characters; first a letter or digit), so it can never name a path; else a BundleError
    naming `where` (the file or command it came from)."""
    if not isinstance(bundle_id, str) or not BUNDLE_ID.fullmatch(bundle_id):
        raise BundleError(f"{where}: bundle id {bundle_id!r} is not a plain name (letters, digits, '.', '_' "
                          "and '-', at most 128 characters, starting with a letter or digit)")
    return bundle_id


def data_hash(dvc_file: Path = Path("data.dvc"), lock_file: Path = Path("dvc.lock"),
              data_dir: str = "data") -> str | None:
    """The md5 DVC recorded for the data folder: from data.dvc, else from the validate stage's
    dependency in dvc.lock; None when neither records it."""
    if dvc_file.is_file():
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
        return outs[0].get("md5")
    if lock_file.is_file():
        stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages") or {}
        for dep in (stages.get("validate") or {}).get("deps") or []:
            if dep.get("path") == data_dir:
                return dep.get("md5")
    return None


# Written by a retrain (amo.orchestration.experiment) while its stages run: the DVC experiment its
# inputs and outputs are saved as, named in the manifest of the bundle it builds.
EXPERIMENT_FILE = Path(STATE_DIR) / "experiment"


def experiment(path: Path = EXPERIMENT_FILE) -> str | None:
    """The DVC experiment of the retrain that is running, or None (a plain `dvc repro`)."""
    return path.read_text(encoding="utf-8").strip() or None if path.is_file() else None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _sealed(directory: Path, path: Path) -> bool:
    """Whether `path` is one of the files the manifest lists (not the manifest, not its signature)."""
    return path.is_file() and path.name != MANIFEST and path != directory / SIGNATURE


def file_hashes(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): sha256_file(p)
            for p in sorted(directory.rglob("*")) if _sealed(directory, p)}


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without its own `digest`: any changed byte of metrics, params or
    file hashes changes it."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def write_manifest(bundle: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Seal the manifest with its digest and write it; returns the sealed manifest."""
    sealed = {**manifest, "digest": manifest_digest(manifest)}
    (bundle / MANIFEST).write_text(json.dumps(sealed, indent=2, sort_keys=True) + "\n")
    return sealed


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_bundle_id(created: str, files: dict[str, str]) -> str:
    """`<created, compact>-<digest of the file hashes>`: sorts by time, names the contents."""
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:10]
    return f"{created.replace('-', '').replace(':', '')}-{digest}"


def model_refs(params: Params, router_dir: Path) -> dict[str, Any]:
    """The models the bundle was built from, named and hashed. The runtime loads the base model
    from outside the bundle; the encoder too when the bundle carries no ONNX encoder (a
    fine-tuned encoder's hash then matches nothing outside, so it must ship as ONNX)."""
    from amo.encoder_tuning import MANIFEST, served_encoder, tuned_encoder_dir

    encoder_dir = served_encoder(params.encoder, tuned_encoder_dir(router_dir))
    weights = encoder_dir / "model.safetensors"
    base = resolve_base_model(params.base_model.path, params.base_model.gguf_file)
    base_weights = base.weights_file
    assert base_weights is not None
    return {
        "encoder": {"ref": params.encoder.path, "file": weights.name, "sha256": sha256_file(weights),
                    **({"finetuned": json.loads((encoder_dir / MANIFEST).read_text())}
                       if params.encoder.finetune.enabled else {})},
        "base_model": {"ref": params.base_model.path, "gguf_file": params.base_model.gguf_file,
                       "file": base_weights.name, "sha256": sha256_file(base_weights)},
    }


def build_bundle(params: Params, raw_params: dict[str, Any], out: Path, *, router_dir: Path,
                 onnx_path: Path, planner_dir: Path, arms_dir: Path, metrics: dict[str, Any],
                 sign_key: Path | None = None) -> dict[str, Any]:
    """Assemble a bundle in `out` (replaced whole) and return its manifest; with `sign_key` (a PEM
    elliptic-curve private key) the manifest is signed (amo.signing), and says so either way."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    _copy(onnx_path, partial / "router" / "router.onnx")
    for name in ENCODER_FILES:  # the encoder as ONNX, when export_router wrote it
        if (onnx_path.parent / name).is_file():
            _copy(onnx_path.parent / name, partial / "router" / name)
    for name in ("agents.json", "agent_index.safetensors", Classifier.FILE):
        _copy(router_dir / name, partial / "router" / name)
    for name in WARM_START_FILES:  # the next retrain warm-starts from these (amo.ranker); never served
        if (router_dir / name).is_file():
            _copy(router_dir / name, partial / "router" / name)
    _copy(planner_dir / "planner.json", partial / "planner" / "planner.json")
    arm_agents: dict[str, list[str]] = {}
    for task_name, task in sorted(params.arms.tasks.items()):
        for name in ("adapter_config.json", "adapter_model.safetensors", "arm.json"):
            _copy(arms_dir / task_name / name, partial / "arms" / task_name / name)
        arm_agents[task_name] = list(task.agents)
    r = params.router
    runtime = {"router": {"min_k": r.min_k, "max_k": r.max_k, "margin": read_margin(router_dir)},
               "arms": sorted(params.arms.tasks), "arm_agents": arm_agents,
               "encoder_batch_size": params.encoder.batch_size}
    (partial / RUNTIME).write_text(json.dumps(runtime, indent=2, sort_keys=True) + "\n")
    files = file_hashes(partial)
    created = now()
    manifest = {
        "format_version": FORMAT_VERSION,
        "bundle_id": new_bundle_id(created, files),
        "created": created, "git_commit": git_commit(), "data_hash": data_hash(), "experiment": experiment(),
        "amo_version": amo.__version__, "params": raw_params, "metrics": metrics,
        "models": model_refs(params, router_dir), "files": files, "signing": None,
    }
    manifest = write_manifest(partial, manifest)
    if sign_key is not None:
        from amo.signing import sign_bundle

        manifest = sign_bundle(partial, sign_key)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    return manifest


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle}: not a bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: the manifest is not a JSON object")
    for key in ("bundle_id", "files", "metrics", "models", "digest"):
        if key not in manifest:
            raise BundleError(f"{path}: manifest lacks {key!r}")
    check_bundle_id(manifest["bundle_id"], str(path))
    if manifest["digest"] != manifest_digest(manifest):
        raise BundleError(f"bundle {manifest['bundle_id']} at {bundle} failed verification: "
                          "manifest.json was changed (its digest does not match)")
    return manifest


def file_problems(bundle: Path, manifest: dict[str, Any], under: str = "") -> list[str]:
    """What differs between the files of `bundle` (those below `under`, e.g. `arms/rewrite/`)
    and the manifest's hashes: missing, extra and changed files, each named."""
    expected = {name: digest for name, digest in manifest["files"].items() if name.startswith(under)}
    folder = bundle / under if under else bundle
    actual = {str(p.relative_to(bundle)) for p in folder.rglob("*") if _sealed(bundle, p)}
    problems = [f"missing file {name}" for name in sorted(set(expected) - actual)]
    problems += [f"extra file {name}" for name in sorted(actual - set(expected))]
    problems += [f"checksum mismatch in {name}" for name in sorted(set(expected) & actual)
                 if sha256_file(bundle / name) != expected[name]]
    return problems


def verify_bundle(bundle: Path) -> dict[str, Any]:
    """Check every file against the manifest: none missing, none extra, none changed."""
    manifest = read_manifest(bundle)
    problems = file_problems(bundle, manifest)
    if problems:
        raise BundleError(f"bundle {manifest['bundle_id']} at {bundle} failed verification: "
                          + "; ".join(problems))
    return manifest
