"""The Prefect tasks of the flows in `flows/`. They live in the installed package, not in
`flows/`, so that Dask workers (or any remote task runner) can import them by name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from amo import orchestration as orch
from amo.config import OrchestrationParams

DASK_ENV = "AMO_DASK_ADDRESS"


def _live(stage: str) -> Any:
    """Each line the stage prints, into the task run's log as it comes (visible in the UI)."""
    logger = get_run_logger()
    return lambda line: logger.info("%s | %s", stage, line)


@task(name="stage", task_run_name="{stage}")
def stage_task(stage: str, repo: str = ".") -> str:
    """One DVC stage: `dvc repro --single-item STAGE` (DVC skips it when nothing changed)."""
    return orch.tail(orch.run_stage(stage, Path(repo), on_line=_live(stage)))


@task(name="finetune_arm", task_run_name="{stage}")
def finetune_arm(stage: str, repo: str = ".") -> str:
    """One arm's stage `finetune_arm@<task>`: a separate task run per arm, so arms fan out."""
    return orch.tail(orch.run_stage(stage, Path(repo), on_line=_live(stage)))


def arm_task_runner(params: OrchestrationParams) -> TaskRunner:
    """Where arm fine-tunes run: a Dask cluster when a scheduler address is configured
    (env AMO_DASK_ADDRESS, then params.yaml orchestration.dask_address), else local threads."""
    address = os.environ.get(DASK_ENV) or params.dask_address
    if address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=address)
    return ThreadPoolTaskRunner(max_workers=params.arm_workers)
