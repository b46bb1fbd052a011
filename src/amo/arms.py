"""LoRA arms: one shared base causal LM, one peft LoRA adapter per task.

`train_arm` fine-tunes one task's adapter; `ArmServer` loads every arm onto a single copy of the
base model and answers mixed batches in which each row names its arm (or none: the base model).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amo.config import ArmTaskParams
from amo.data import TaskExample
from amo.metrics import TEXT_METRICS
from amo.progress import Progress

ARM_FILE = "arm.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class ArmLoadError(ValueError):
    """An arm directory that cannot be served; the message names the file."""


def _eos_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise ValueError("the base model's tokenizer has neither an eos nor a sep token")
    return int(eos)


def encode_example(tokenizer: Any, prompt: str, target: str, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels for one example; the loss covers the target (and EOS) only."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [_eos_id(tokenizer)]
    target_ids = target_ids[: max_length // 2] if len(target_ids) > max_length // 2 else target_ids
    prompt_ids = prompt_ids[-(max_length - len(target_ids)):]
    return prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids


def _collate(tokenizer: Any, rows: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    ids = [[pad] * (width - len(i)) + i for i, _ in rows]  # left padding, as in generation
    labels = [[-100] * (width - len(lab)) + lab for _, lab in rows]
    mask = [[0] * (width - len(i)) + [1] * len(i) for i, _ in rows]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask)}


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    seconds: float
    resumed_from: int = 0
    losses: list[float] = field(default_factory=list)  # per step, from step 1 (kept across resumes)


CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"


def checkpoint_dir(arm_dir: Path) -> Path:
    """Where training of the arm saved in `arm_dir` keeps its checkpoint: a sibling folder, since
    DVC empties a stage's outputs before running it."""
    return arm_dir.with_name(arm_dir.name + ".checkpoint")


def _run_key(name: str, task: ArmTaskParams, encoded: list[tuple[list[int], list[int]]], model: Any) -> str:
    """What a checkpoint must match to be resumed: the arm, its params, its data, the base model."""
    import hashlib

    digest = hashlib.sha256(json.dumps([name, task.model_dump(exclude={"checkpoint_every"}), encoded,
                                        model.config.to_json_string()]).encode())
    return digest.hexdigest()


def _save_checkpoint(directory: Path, model: Any, name: str, optimizer: Any, state: dict[str, Any]) -> None:
    """Adapter weights, optimizer moments and RNG states (safetensors) plus step and sample order
    (JSON), written to a fresh folder that then replaces the old one: a kill mid-write never
    leaves a half-written checkpoint to resume from."""
    import shutil

    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    tensors = {f"adapter.{k}": v.detach().clone().contiguous()
               for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}
    for index, moments in optimizer.state_dict()["state"].items():
        for key, value in moments.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).clone().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(tensors, str(partial / CHECKPOINT_WEIGHTS))
    (partial / CHECKPOINT_STATE).write_text(json.dumps(state))
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)


def _load_checkpoint(directory: Path, model: Any, name: str, optimizer: Any, key: str,
                     log: Callable[[str], None]) -> dict[str, Any] | None:
    """Restore a checkpoint made by the same run key; None (and the folder removed) otherwise."""
    import shutil

    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if not (directory / CHECKPOINT_STATE).is_file():
        return None
    try:
        state = json.loads((directory / CHECKPOINT_STATE).read_text())
        tensors = load_file(str(directory / CHECKPOINT_WEIGHTS))
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint only costs the steps it saved
        log(f"arm {name}: ignoring unreadable checkpoint {directory}: {exc}")
        shutil.rmtree(directory, ignore_errors=True)
        return None
    if state.get("run_key") != key:
        log(f"arm {name}: checkpoint {directory} is from other params or data; starting afresh")
        shutil.rmtree(directory, ignore_errors=True)
        return None
    set_peft_model_state_dict(model, {k.removeprefix("adapter."): v for k, v in tensors.items()
                                      if k.startswith("adapter.")}, adapter_name=name)
    moments: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optimizer."):
            _, index, field = k.split(".", 2)
            moments.setdefault(int(index), {})[field] = v
    optimizer.load_state_dict({"state": moments, "param_groups": optimizer.state_dict()["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return state


def train_arm(base_model: Any, tokenizer: Any, name: str, task: ArmTaskParams,
              examples: Sequence[TaskExample], log: Callable[[str], None] = print,
              checkpoint: Path | None = None,
              on_step: Callable[[int], None] | None = None) -> tuple[Any, TrainResult]:
    """Wrap `base_model` with a fresh LoRA adapter called `name` and fine-tune it on `examples`.

    With `checkpoint`, the adapter, optimizer, step, sample order and RNG states are saved there
    every `task.checkpoint_every` steps, and a later call with the same arguments resumes from it
    and ends with the same weights as an uninterrupted run. The caller removes it once the arm is
    saved (`clear_checkpoint`). `on_step(step)` runs after each step (and its checkpoint).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    if not examples:
        raise ValueError(f"arm {name!r}: no training examples")
    torch.manual_seed(task.seed)
    rng = random.Random(task.seed)
    config = LoraConfig(r=task.r, lora_alpha=task.alpha, lora_dropout=task.dropout,
                        target_modules=list(task.targets), task_type="CAUSAL_LM")
    model = get_peft_model(base_model, config, adapter_name=name)
    encoded = [encode_example(tokenizer, task.template.format(input=e.input), e.output, task.max_length)
               for e in examples]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=task.lr)
    first, loss_value, order, losses = 1, float("nan"), [], []
    key = _run_key(name, task, encoded, base_model) if checkpoint is not None else ""
    if checkpoint is not None:
        state = _load_checkpoint(checkpoint, model, name, optimizer, key, log)
        if state is not None:
            first, loss_value, order = state["step"] + 1, state["loss"], state["order"]
            losses = list(state.get("losses", []))
            version, internal, gauss = state["rng"]
            rng.setstate((version, tuple(internal), gauss))
            log(f"arm {name}: resuming from step {state['step']}/{task.steps} ({checkpoint})")
    model.train()
    start = time.perf_counter()
    bar = Progress(f"arm {name}: step", task.steps, log, every=max(1, task.steps // 10))  # a bar on a terminal
    for step in range(first, task.steps + 1):
        if len(order) < task.batch_size:  # epochs of a seeded shuffle
            fresh = list(range(len(encoded)))
            rng.shuffle(fresh)
            order += fresh
        batch, order = order[: task.batch_size], order[task.batch_size:]
        loss = model(**_collate(tokenizer, [encoded[i] for i in batch])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_value = loss.item()
        losses.append(round(loss_value, 6))
        elapsed = time.perf_counter() - start
        left = elapsed / (step - first + 1) * (task.steps - step)
        bar.update(step, f"loss {loss_value:.4f} elapsed {elapsed:.0f}s left ~{left:.0f}s")
        if checkpoint is not None and (step % task.checkpoint_every == 0 and step < task.steps):
            _save_checkpoint(checkpoint, model, name, optimizer,
                             {"run_key": key, "step": step, "loss": loss_value, "order": order, "losses": losses,
                              "rng": list(rng.getstate())})
        if on_step is not None:
            on_step(step)
    bar.close()
    model.eval()
    return model, TrainResult(task.steps, loss_value, time.perf_counter() - start, first - 1, losses)


def clear_checkpoint(checkpoint: Path) -> None:
    """Remove a training checkpoint (and any half-written one) once its arm is saved."""
    import shutil

    shutil.rmtree(checkpoint, ignore_errors=True)
    shutil.rmtree(checkpoint.with_name(checkpoint.name + ".partial"), ignore_errors=True)


def _canonical_json(path: Path) -> None:
    """Rewrite a JSON file with sorted keys and sorted `target_modules`: peft writes that set in
    Python's per-process hash order, so the same training run would give different bytes (and DVC
    would see a changed arm) on every re-run."""
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_arm(model: Any, name: str, task: ArmTaskParams, directory: Path, extra: dict[str, Any]) -> None:
    """Adapter weights via save_pretrained (safetensors) plus arm.json, which rebuilds the prompt."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), selected_adapters=[name])
    nested = directory / name  # peft nests non-default adapter names in a sub-folder
    if nested.is_dir():
        for file in nested.iterdir():
            file.replace(directory / file.name)
        nested.rmdir()
    _canonical_json(directory / "adapter_config.json")
    meta = {"name": name, "template": task.template, "max_new_tokens": task.max_new_tokens,
            "metric": task.metric, "params": task.model_dump(), **extra}
    (directory / ARM_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def read_arm_meta(directory: Path) -> dict[str, Any]:
    """arm.json of an arm directory, after checking the adapter files are there and readable."""
    for file in (ARM_FILE, *ADAPTER_FILES):
        if not (directory / file).is_file():
            raise ArmLoadError(f"arm {directory.name!r}: missing {directory / file}")
    try:
        meta = json.loads((directory / ARM_FILE).read_text())
        json.loads((directory / "adapter_config.json").read_text())
        from safetensors import safe_open

        with safe_open(str(directory / "adapter_model.safetensors"), "pt") as handle:
            list(handle.keys())
    except Exception as exc:  # noqa: BLE001 - a corrupt file surfaces as many exception types
        raise ArmLoadError(f"arm {directory.name!r}: unreadable file in {directory}: {exc}") from None
    return meta



def generate(model: Any, tokenizer: Any, prompts: list[str], adapter_names: list[str] | None,
             max_new_tokens: int) -> list[str]:
    """Greedy generation for a left-padded batch; `adapter_names` picks each row's arm."""
    import torch

    enc = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    kwargs = {"adapter_names": adapter_names} if adapter_names is not None else {}
    with torch.inference_mode():
        out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                             max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=_eos_id(tokenizer),
                             **kwargs)
    new = out[:, enc["input_ids"].shape[1]:]
    return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]


def evaluate_arm(model: Any, tokenizer: Any, name: str, task: ArmTaskParams,
                 examples: Sequence[TaskExample], batch_size: int = 8,
                 metrics: Sequence[str] = ()) -> dict[str, dict[str, float]]:
    """The task metric (and any other `metrics`) for the arm and for the base model prompted
    the same way, over the first `task.eval_examples` examples."""
    names = list(dict.fromkeys([task.metric, *metrics]))
    examples = list(examples)[: task.eval_examples]
    results: dict[str, dict[str, float]] = {}
    for system, adapter in (("arm", name), ("base", BASE)):
        values: dict[str, list[float]] = {metric: [] for metric in names}
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            outputs = generate(model, tokenizer, [task.template.format(input=e.input) for e in chunk],
                               [adapter] * len(chunk), task.max_new_tokens)
            for metric in names:
                values[metric] += [TEXT_METRICS[metric](o, e.output) for o, e in zip(outputs, chunk)]
        results[system] = {metric: sum(v) / len(v) if v else 0.0 for metric, v in values.items()}
        results[system]["examples"] = len(examples)
    return results


class ArmServer:
    """All arms on one base model in memory; each request row names its arm."""

    def __init__(self, base_model: Any, tokenizer: Any, arm_dirs: dict[str, Path]) -> None:
        from peft import PeftModel

        if not arm_dirs:
            raise ArmLoadError("no arms to serve")
        self.tokenizer = tokenizer
        self.meta = {name: read_arm_meta(path) for name, path in arm_dirs.items()}
        names = sorted(arm_dirs)
        try:
            model = PeftModel.from_pretrained(base_model, str(arm_dirs[names[0]]), adapter_name=names[0])
            for name in names[1:]:
                model.load_adapter(str(arm_dirs[name]), adapter_name=name)
        except Exception as exc:  # noqa: BLE001 - peft and safetensors fail in many types; one error names the arms
            raise ArmLoadError(f"could not load arms {names}: {exc}") from None
        model.eval()
        self.model = model

    @property
    def arms(self) -> list[str]:
        return sorted(self.meta)

    def invoke(self, rows: list[tuple[str | None, str]], max_new_tokens: int | None = None) -> list[str]:
        """rows: (arm name or None for the base model, input). One mixed batch, outputs in order."""
        for arm, _ in rows:
            if arm is not None and arm not in self.meta:
                raise KeyError(f"unknown arm {arm!r}; known arms: {', '.join(self.arms)}")
        prompts = [self.meta[arm]["template"].format(input=text) if arm else text for arm, text in rows]
        limit = max_new_tokens or max((self.meta[a]["max_new_tokens"] for a, _ in rows if a), default=48)
        return generate(self.model, self.tokenizer, prompts, [arm or BASE for arm, _ in rows], limit)
