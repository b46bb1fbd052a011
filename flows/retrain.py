"""Prefect flow: the retraining pipeline, one task per DVC stage, in dvc.yaml's order.

    python flows/retrain.py            # run once against the local (ephemeral) Prefect API

The graph is read from dvc.yaml (never copied here); each task runs `dvc repro --single-item`,
so DVC still skips unchanged stages.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from prefect import flow, task


def stage_names(dvc_file: Path = Path("dvc.yaml")) -> list[str]:
    """Stages in the file's (topological) order; foreach stages expand to `name@key`."""
    spec = yaml.safe_load(dvc_file.read_text())
    params = yaml.safe_load(Path("params.yaml").read_text())
    names = []
    for name, stage in spec["stages"].items():
        if "foreach" in stage:
            keys = params["arms"]["tasks"] if stage["foreach"] == "${arms.tasks}" else stage["foreach"]
            names += [f"{name}@{key}" for key in keys]
        else:
            names.append(name)
    return names


@task(retries=1, retry_delay_seconds=5)
def run_stage(name: str) -> str:
    result = subprocess.run(["dvc", "repro", "--single-item", name], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"stage {name} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


@flow(name="retrain")
def retrain(promote: bool = True) -> None:
    for name in stage_names():
        run_stage(name)
    if promote:
        subprocess.run(["amo", "promote", "build/bundle"], check=True)


if __name__ == "__main__":
    retrain()
