"""Optional fine-tuning of the sentence encoder on the routing data.

Two objectives (`encoder.finetune.loss`):
- "mnrl": sentence-transformers' trainer with MultipleNegativesRankingLoss over (prompt, relevant
  agent description) pairs: every other description in a batch is a negative for a prompt, so the
  no-duplicates batch sampler keeps two prompts of one agent (same description) out of a batch.
- "listwise": the router's graded listwise loss on scaled cosine similarities between each prompt
  and every agent's description (encoded in the same step, so gradients reach both sides) plus a
  learned separator direction, so out-of-scope prompts, which have no pair, train the encoder to
  keep away from every description.
The tuned encoder is a plain sentence-transformers directory (plus `finetune.json`), usable
anywhere `encoder.path` is.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from amo.config import ConfigError, EncoderParams, FinetuneParams
from amo.data import Agent, RoutingExample
from amo.models import Encoder, offline, resolve_encoder

MANIFEST = "finetune.json"


def training_pairs(examples: Sequence[RoutingExample], agents: Sequence[Agent],
                   positives: str = "all") -> list[tuple[str, str]]:
    """(prompt, description) for every relevant agent of every in-scope example, or with
    `positives="top"` for its highest-graded agents only; out-of-scope prompts have no positive
    and are left out. An unknown agent id is refused by row."""
    descriptions = {agent.id: agent.description for agent in agents}
    pairs = []
    for row, example in enumerate(examples):
        top = max(example.labels.values(), default=0)
        for agent_id in sorted(example.labels, key=lambda a: -example.labels[a]):
            if agent_id not in descriptions:
                raise ValueError(f"routing row {row}: labels names unknown agent {agent_id!r}")
            if positives == "all" or example.labels[agent_id] == top:
                pairs.append((example.prompt, descriptions[agent_id]))
    return pairs


def finetune_encoder(base: Path, pairs: Sequence[tuple[str, str]], out: Path, params: FinetuneParams,
                     log: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Train the encoder at `base` on `pairs` (at most `params.max_examples`, a seeded sample) and
    save it to `out`; returns `out`."""
    offline()
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    if not pairs:
        raise ValueError("encoder fine-tuning needs at least one (prompt, description) pair, got none")
    chosen = list(pairs)
    if params.max_examples and len(chosen) > params.max_examples:
        chosen = random.Random(params.seed).sample(chosen, params.max_examples)
    torch.manual_seed(params.seed)
    model = SentenceTransformer(str(base), device="cpu")
    data = Dataset.from_dict({"prompt": [p for p, _ in chosen], "description": [d for _, d in chosen]})

    class Report(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **_: Any) -> None:
            if log and logs:
                log({"step": state.global_step, **logs})

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="amo-encoder-ft-") as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch, num_train_epochs=params.epochs, per_device_train_batch_size=params.batch_size,
            learning_rate=params.lr, warmup_steps=params.warmup, seed=params.seed, data_seed=params.seed,
            batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", report_to="none", use_cpu=True,
            logging_steps=params.log_steps, disable_tqdm=True, dataloader_num_workers=0)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                                             loss=MultipleNegativesRankingLoss(model), callbacks=[Report()])
        trainer.train()
    return _save_tuned(model, out, {"base": str(base), "pairs": len(chosen),
                                    "seconds": round(time.perf_counter() - start, 1),
                                    "steps": trainer.state.global_step, "params": params.model_dump()})


def _save_tuned(model: Any, out: Path, manifest: dict[str, Any]) -> Path:
    """Save a tuned sentence-transformers model to `out`, its manifest last: `served_encoder`
    takes a folder with a manifest as whole."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def tuned_encoder_dir(router_dir: Path) -> Path:
    """Where train_router writes the tuned encoder: inside the router's folder, versioned with it."""
    return Path(router_dir) / "encoder"


def stage_encoder(params: EncoderParams, router_dir: Path, store: Path | None = None) -> Any:
    """The encoder every stage from train_router on embeds with (resolved once per stage), and
    the one the bundle serves; with `store` (the embed stage's output), texts it holds for this
    encoder are read from it, the rest embedded (amo.embeddings)."""
    encoder = Encoder(served_encoder(params, tuned_encoder_dir(router_dir)), params.batch_size)
    if store is None:
        return encoder
    from amo.embeddings import CachedEncoder

    return CachedEncoder(encoder, store)


def served_encoder(params: EncoderParams, tuned: Path) -> Path:
    """`encoder.path` resolved, or with `finetune.enabled` the tuned copy at `tuned`, which must
    be whole (its manifest written last)."""
    if not params.finetune.enabled:
        return resolve_encoder(params.path)
    if not (Path(tuned) / MANIFEST).is_file():
        raise ConfigError(f"encoder.finetune.enabled: no fine-tuned encoder at {tuned} "
                          "(train_router writes it: run `dvc repro train_router`)")
    return Path(tuned)


def finetune_encoder_listwise(base: Path, examples: Sequence[RoutingExample], agents: Sequence[Agent],
                              out: Path, params: FinetuneParams,
                              log: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Train the encoder at `base` with the listwise loss over `agents` on `examples` (at most
    `params.max_examples`, a seeded sample; out-of-scope rows included) and save it to `out`."""
    offline()
    import math

    import torch
    from sentence_transformers import SentenceTransformer

    from amo.router import candidate_columns, listwise_loss
    from amo.routing import grade_matrix

    rows = list(examples)
    if not any(e.labels for e in rows):
        raise ValueError("encoder fine-tuning needs at least one in-scope prompt, got none")
    if params.max_examples and len(rows) > params.max_examples:
        rows = random.Random(params.seed).sample(rows, params.max_examples)
    grades = torch.from_numpy(grade_matrix(rows, [a.id for a in agents]))  # refuses unknown agents by row
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    model = SentenceTransformer(str(base), device="cpu")
    model.train()
    prompts, descriptions = [e.prompt for e in rows], [a.description for a in agents]
    separator = torch.nn.Parameter(0.01 * torch.randn(model.get_sentence_embedding_dimension(), generator=generator))
    optimizer = torch.optim.AdamW([{"params": model.parameters(), "lr": params.lr},
                                   {"params": [separator], "lr": 1e-3}], weight_decay=0.01)
    per_epoch = math.ceil(len(rows) / params.batch_size)
    total = max(1, int(params.epochs * per_epoch))
    warmup = int(params.warmup * total)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / max(warmup, 1), max(0.0, (total - step) / max(total - warmup, 1))))

    def embed(texts: list[str]) -> torch.Tensor:
        features = model.preprocess(texts)
        return model(features)["sentence_embedding"]

    start, step, running = time.perf_counter(), 0, 0.0
    while step < total:
        for batch in torch.randperm(len(rows), generator=generator).split(params.batch_size):
            if step >= total:
                break
            g = grades[batch]
            columns = candidate_columns(g, params.max_candidates, generator)
            p = embed([prompts[i] for i in batch.tolist()])
            d = embed([descriptions[i] for i in columns[:-1].tolist()])
            direction = torch.nn.functional.normalize(separator, dim=0)
            scores = params.scale * torch.cat([p @ d.t(), (p @ direction).unsqueeze(1)], dim=1)
            loss = listwise_loss(scores, g[:, columns])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step, running = step + 1, running + loss.item()
            if log and step % params.log_steps == 0:
                log({"step": step, "loss": round(running / params.log_steps, 4),
                     "epoch": round(step / per_epoch, 3), "seconds": round(time.perf_counter() - start, 1)})
                running = 0.0
    model.eval()
    return _save_tuned(model, out, {"base": str(base), "examples": len(rows),
                                    "pairs": sum(len(e.labels) > 0 for e in rows),
                                    "seconds": round(time.perf_counter() - start, 1), "steps": step,
                                    "params": params.model_dump()})


def prepare_encoder(params: EncoderParams, examples: Sequence[RoutingExample], agents: Sequence[Agent],
                    out: Path, log: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """The encoder directory the pipeline should use: `encoder.path` untouched when
    `encoder.finetune.enabled` is false, else a copy fine-tuned on `examples` saved to `out`."""
    base = resolve_encoder(params.path)
    if not params.finetune.enabled:
        return base
    return tune_encoder(base, examples, agents, out, params.finetune, log)


def tune_encoder(base: Path, examples: Sequence[RoutingExample], agents: Sequence[Agent], out: Path,
                 params: FinetuneParams, log: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """The encoder at `base` tuned on `examples` with `params.loss`, saved to `out`."""
    if params.loss == "listwise":
        return finetune_encoder_listwise(base, examples, agents, out, params, log)
    return finetune_encoder(base, training_pairs(examples, agents, params.positives), out, params, log)
