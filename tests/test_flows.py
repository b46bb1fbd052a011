"""The Prefect retrain flow follows dvc.yaml: its steps are exactly the DVC stages, in order."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_flow_steps_are_the_dvc_stages() -> None:
    """Every stage of `dvc stage list` appears in the flow's step list, and no other step."""
    sys.path.insert(0, str(ROOT / "flows"))
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        from retrain import stage_names

        steps = stage_names()
        listed = subprocess.run([str(Path(sys.executable).parent / "dvc"), "stage", "list", "--name-only"],
                                capture_output=True, text=True, check=True).stdout.split()
    finally:
        os.chdir(cwd)
    assert sorted(steps) == sorted(listed)
    tasks = yaml.safe_load((ROOT / "params.yaml").read_text())["arms"]["tasks"]
    assert {f"finetune_arm@{t}" for t in tasks} <= set(steps)
    assert steps.index("validate") == 0 and steps[-1] == "bundle"
