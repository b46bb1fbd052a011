"""Serve amo's deployments from this repository (run it from the repository root):

    prefect server start --host 127.0.0.1 --port 4200                      # one terminal
    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/serve.py        # another

retrain/nightly             cron from params.yaml orchestration.nightly_cron, in orchestration.timezone
on-new-data/on-new-agent-data  runs on each `amo.data.updated` event of this repository (sent by
                            `amo data update`, `amo agents add` and data-sensor), with the event's data
                            hash: publish-index first (new agents served without retraining), then retrain
data-sensor/every-interval  emits that event when the data folder changed (a new agents.jsonl dropped in place)
promote/manual              gate and promote a given bundle folder
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import serve
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron, Interval
from retrain import data_sensor, on_new_data, promote, retrain

from amo.config import load_params
from amo.orchestration import DATA_UPDATED


def deployments(repo: Path) -> list[Any]:
    """The four deployments of the repository at `repo`, configured from its params.yaml."""
    repo = repo.resolve()
    o = load_params(repo / "params.yaml").orchestration
    here = {"repo": str(repo)}
    on_data = DeploymentEventTrigger(
        name="new agent data", expect={DATA_UPDATED},
        match={"prefect.resource.id": f"amo.data.{repo.name}"},
        parameters={**here, "data_hash": "{{ event.payload.data_hash }}"})
    return [
        retrain.to_deployment("nightly", parameters=here,
                              schedules=[Cron(o.nightly_cron, timezone=o.timezone)]),
        on_new_data.to_deployment("on-new-agent-data", parameters=here, triggers=[on_data]),
        data_sensor.to_deployment("every-interval", parameters=here,
                                  schedules=[Interval(o.sensor_interval_seconds)]),
        promote.to_deployment("manual", parameters=here),
    ]


if __name__ == "__main__":
    serve(*deployments(Path.cwd()))
