"""How separable is the demo copilot's routing data by surface words, and does the router still learn it?

    python benchmarks/demo_separability.py [--seed 13] [--skip-router]

Writes the demo data for the seed into a temporary folder, then measures on its test split:
- bag-of-words baselines trained on train, scored top-1 over the primary agent or "oos"
  (unigram counts + logistic regression is the issue's yardstick; unigram+bigram TF-IDF is a
  stronger surface baseline, reported alongside);
- amo's router (frozen real encoder + ListwiseRouter with the params.yaml hyperparameters,
  torch scores, separator selection) with the pipeline's own router metrics;
- the planner (TreePlanner with params.yaml settings) on the held-out traces.
Single-threaded (OMP_NUM_THREADS=1, torch.set_num_threads(1)) on a shared 2-core machine.
Writes benchmarks/results/demo_separability.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

RESULT = Path("benchmarks/results/demo_separability.json")


def primary(labels: dict[str, int]) -> str:
    return max(sorted(labels), key=labels.get) if labels else "oos"


def bag_of_words(train: list, test: list) -> dict[str, float]:
    """Top-1 accuracy of surface-word classifiers over the primary agent (or "oos")."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    x_train, y_train = [e.prompt for e in train], [primary(e.labels) for e in train]
    x_test, y_test = [e.prompt for e in test], [primary(e.labels) for e in test]
    out = {}
    for name, vectorizer in (("unigram_count_logreg", CountVectorizer()),
                             ("uni_bigram_tfidf_logreg", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True))):
        model = LogisticRegression(max_iter=2000, C=10.0 if "tfidf" in name else 1.0)
        model.fit(vectorizer.fit_transform(x_train), y_train)
        out[name] = round(float(model.score(vectorizer.transform(x_test), y_test)), 4)
    return out


def router_and_planner(data: Path, params) -> dict[str, dict[str, float]]:
    """Train the router and planner as the pipeline does (torch scores instead of ONNX)."""
    import numpy as np
    import torch

    from amo import data as contracts
    from amo.metrics import planner_metrics as evaluate_planner
    from amo.metrics import router_metrics as evaluate_router
    from amo.models import Encoder, resolve_encoder
    from amo.planner import TreePlanner
    from amo.router import ListwiseRouter
    from amo.routing import AgentIndex, grade_matrix, rankings, select

    torch.set_num_threads(1)
    encoder = Encoder(resolve_encoder(params.encoder.path), params.encoder.batch_size)
    index = AgentIndex.build(contracts.read_agents(data / "agents.jsonl"), encoder)
    splits = {name: contracts.read_routing(data / "routing" / f"{name}.jsonl") for name in ("train", "val", "test")}
    x = {name: encoder.encode([e.prompt for e in examples]) for name, examples in splits.items()}
    p = params.router
    router = ListwiseRouter(hidden=p.hidden, dropout=p.dropout, epochs=p.epochs, lr=p.lr,
                            weight_decay=p.weight_decay, batch_size=p.batch_size, seed=p.seed)
    router.fit(x["train"], grade_matrix(splits["train"], index.ids), index.embeddings,
               val=(x["val"], grade_matrix(splits["val"], index.ids)))

    def view(prompts: list[str]) -> tuple[np.ndarray, list[dict[str, float]], list[float]]:
        emb = encoder.encode(prompts)
        scores = router.score(emb, index.embeddings)
        return emb, [dict(zip(index.ids, row[:-1].tolist())) for row in scores], scores[:, -1].tolist()

    scores = router.score(x["test"], index.embeddings)
    routes = [select(row, index.ids, min_k=p.min_k, max_k=p.max_k, margin=p.margin) for row in scores]
    ranked = rankings(scores, index.ids)
    router_metrics = evaluate_router(routes, splits["test"], ranked)

    traces = {name: contracts.read_traces(data / "traces" / f"{name}.jsonl") for name in ("train", "test")}
    q = params.planner
    emb, s, sep = view([t.prompt for t in traces["train"]])
    planner = TreePlanner(pca_dims=q.pca_dims, max_depth=q.max_depth, min_samples_leaf=q.min_samples_leaf,
                          max_path_len=q.max_path_len, seed=q.seed)
    planner.fit([t.prompt for t in traces["train"]], emb, s, sep, [t.path for t in traces["train"]], index.ids)
    emb, s, sep = view([t.prompt for t in traces["test"]])
    predicted = [planner.plan(t.prompt, e, a, b).path for t, e, a, b in zip(traces["test"], emb, s, sep)]
    planner_metrics = evaluate_planner(predicted, [t.path for t in traces["test"]])
    return {"router": {k: round(v, 4) for k, v in router_metrics.items()},
            "planner": {k: round(v, 4) for k, v in planner_metrics.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=13, help="demo data seed")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--skip-router", action="store_true", help="only the bag-of-words baselines")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()

    from amo import data as contracts
    from amo.config import load_params
    from amo.demo import write_demo_data

    params = load_params(args.params)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        counts = write_demo_data(data, seed=args.seed)
        train = contracts.read_routing(data / "routing" / "train.jsonl")
        test = contracts.read_routing(data / "routing" / "test.jsonl")
        result = {"command": "python " + " ".join(sys.argv), "seed": args.seed, "counts": counts,
                  "test_prompts": len(test), "bag_of_words_top1": bag_of_words(train, test),
                  "threads": 1, "machine": "shared 2-core CPU, no GPU"}
        if not args.skip_router:
            result.update(router_and_planner(data, params))
    result["seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "counts"}, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
