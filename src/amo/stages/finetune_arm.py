"""Stage `finetune_arm@<task>`: one task's LoRA adapter on the shared base model, evaluated
against the base model on the task's test split.

    amo finetune-arm product_extraction --out artifacts/arms/product_extraction --metrics metrics/arms/product_extraction.json --plot metrics/plots/arms/product_extraction.csv
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from amo import data as contracts
from amo.arms import checkpoint_dir, clear_checkpoint, evaluate_arm, save_arm, train_arm
from amo.config import Params
from amo.data import write_csv, write_json
from amo.models import fingerprint, load_base_model, resolve_base_model

log = logging.getLogger("amo")


def run(params: Params, task_name: str, out: Path, metrics: Path, plot: Path | None = None) -> dict[str, Any]:
    if task_name not in params.arms.tasks:
        raise KeyError(f"unknown task {task_name!r}; params.yaml arms.tasks has: "
                       f"{', '.join(sorted(params.arms.tasks))}")
    task = params.arms.tasks[task_name]
    train = contracts.read_task(Path(task.data) / "train.jsonl")
    test = contracts.read_task(Path(task.data) / "test.jsonl")
    base_ref = resolve_base_model(params.base_model.path, params.base_model.gguf_file)
    base, tokenizer = load_base_model(base_ref)
    checkpoint = checkpoint_dir(out)
    model, trained = train_arm(base, tokenizer, task_name, task, train, log=log.info, checkpoint=checkpoint)
    scores = evaluate_arm(model, tokenizer, task_name, task, test)
    # No timing here: the arm folder and these scores are inputs of later stages, and a re-run on
    # the same inputs must write the same bytes, or everything downstream would run again.
    log.info("arm %s: %d steps in %.1f s", task_name, trained.steps, trained.seconds)
    result = {"task": task_name, "train_examples": len(train), "steps": trained.steps,
              "final_loss": trained.final_loss, **scores}
    save_arm(model, task_name, task, out, {"base_model": fingerprint(base_ref), "metrics": result})
    write_json(metrics, result)
    if plot is not None:  # the loss curve, one row per step
        write_csv(plot, ["step", "loss"], [[step, loss] for step, loss in enumerate(trained.losses, 1)])
    clear_checkpoint(checkpoint)
    return result
