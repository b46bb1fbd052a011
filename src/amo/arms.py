"""LoRA arms: one shared base causal LM, one peft LoRA adapter per task.

`train_arm` fine-tunes one task's adapter; `ArmServer` loads every arm onto a single copy of the
base model and answers mixed batches in which each row names its arm (or none: the base model).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amo.config import ArmTaskParams
from amo.data import TaskExample
from amo.metrics import TEXT_METRICS

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


def train_arm(base_model: Any, tokenizer: Any, name: str, task: ArmTaskParams,
              examples: Sequence[TaskExample], log: Callable[[str], None] = print) -> tuple[Any, TrainResult]:
    """Wrap `base_model` with a fresh LoRA adapter called `name` and fine-tune it on `examples`."""
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
    model.train()
    start, loss_value, order = time.perf_counter(), float("nan"), []
    every = max(1, task.steps // 10)
    for step in range(1, task.steps + 1):
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
        if step % every == 0 or step == task.steps:
            elapsed = time.perf_counter() - start
            left = elapsed / step * (task.steps - step)
            log(f"arm {name}: step {step}/{task.steps} loss {loss_value:.4f} "
                f"elapsed {elapsed:.0f}s left ~{left:.0f}s")
    model.eval()
    return model, TrainResult(task.steps, loss_value, time.perf_counter() - start)


def save_arm(model: Any, name: str, task: ArmTaskParams, directory: Path, extra: dict[str, Any]) -> None:
    """Adapter weights via save_pretrained (safetensors) plus arm.json, which rebuilds the prompt."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), selected_adapters=[name])
    nested = directory / name  # peft nests non-default adapter names in a sub-folder
    if nested.is_dir():
        for file in nested.iterdir():
            file.replace(directory / file.name)
        nested.rmdir()
    meta = {"name": name, "template": task.template, "max_new_tokens": task.max_new_tokens,
            "metric": task.metric, **extra}
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
    except Exception as exc:  # a corrupt file surfaces as many exception types
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
                 examples: Sequence[TaskExample], batch_size: int = 8) -> dict[str, dict[str, float]]:
    """The task metric for the arm and for the base model prompted the same way."""
    score = TEXT_METRICS[task.metric]
    examples = list(examples)[: task.eval_examples]
    results: dict[str, dict[str, float]] = {}
    for system, adapter in (("arm", name), ("base", BASE)):
        values = []
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            outputs = generate(model, tokenizer, [task.template.format(input=e.input) for e in chunk],
                               [adapter] * len(chunk), task.max_new_tokens)
            values += [score(o, e.output) for o, e in zip(outputs, chunk)]
        results[system] = {task.metric: sum(values) / len(values) if values else 0.0,
                           "examples": len(values)}
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
        except Exception as exc:
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
