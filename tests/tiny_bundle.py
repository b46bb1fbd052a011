"""A real bundle in seconds: tiny data, the real encoder, a router trained for a few epochs and
exported to ONNX, a planner, and one LoRA arm on the tiny LM. Used by the release tests and by
benchmarks/reliability.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from amo.bundle import MANIFEST, RUNTIME, file_hashes, write_manifest

AGENTS = [
    ("order_status", "Looks up the status, tracking and delivery date of customer orders."),
    ("returns_refunds", "Handles return requests and refunds for delivered products."),
    ("product_search", "Searches the product catalog for items matching a description."),
    ("price_lookup", "Tells the current price and discounts of a given product."),
]
ROUTING = {
    "train": [("where is my order 1234", "order_status"), ("track parcel 99812", "order_status"),
              ("when will my package arrive", "order_status"), ("has order 55 shipped", "order_status"),
              ("I want to return my jacket", "returns_refunds"), ("refund for a broken mug", "returns_refunds"),
              ("how do I send back shoes", "returns_refunds"), ("money back for my lamp", "returns_refunds"),
              ("find red running shoes", "product_search"), ("show me cheap laptops", "product_search"),
              ("search for a blue sofa", "product_search"), ("any wireless earbuds", "product_search"),
              ("how much is the iphone", "price_lookup"), ("price of the nike air max", "price_lookup"),
              ("is the tv on discount", "price_lookup"), ("what does the kettle cost", "price_lookup"),
              ("tell me a joke", None), ("what is the weather on mars", None)],
    "val": [("where is order 777", "order_status"), ("return my broken phone", "returns_refunds"),
            ("find a green backpack", "product_search"), ("sing me a song", None)],
    "test": [("track my order 31", "order_status"), ("price of the dyson fan", "price_lookup"),
             ("search for hiking boots", "product_search"), ("who won the match", None)],
}
TRACES = {
    "train": [("where is my order 1234", ["order_status"]), ("track parcel 99812", ["order_status"]),
              ("refund for a broken mug", ["order_status", "returns_refunds"]),
              ("I want to return my jacket", ["order_status", "returns_refunds"]),
              ("find red running shoes", ["product_search"]), ("show me cheap laptops", ["product_search"]),
              ("price of the nike air max", ["product_search", "price_lookup"]),
              ("how much is the iphone", ["product_search", "price_lookup"]),
              ("tell me a joke", []), ("what is the weather on mars", [])],
    "test": [("track my order 31", ["order_status"]), ("price of the dyson fan", ["product_search", "price_lookup"]),
             ("who won the match", [])],
}
TASK = {
    "train": [("and the price?", "What is the price of the shoes?"),
              ("and in blue?", "Do the shoes come in blue?"),
              ("when will it come", "When will my order arrive?"),
              ("can I return it", "Can I return the jacket?")],
    "test": [("how much is shipping", "How much does shipping cost?"),
             ("and in red?", "Do the shoes come in red?")],
}


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_tiny_data(data: Path) -> None:
    _write(data / "agents.jsonl", [{"id": i, "description": d} for i, d in AGENTS])
    for split, rows in ROUTING.items():
        _write(data / "routing" / f"{split}.jsonl",
               [{"prompt": p, "labels": {a: 2} if a else {}} for p, a in rows])
    for split, rows in TRACES.items():
        _write(data / "traces" / f"{split}.jsonl",
               [{"prompt": p, "path": path, "outcome": "success" if path else "abstained"}
                for p, path in rows])
    for split, rows in TASK.items():
        _write(data / "tasks" / "rewrite" / f"{split}.jsonl", [{"input": i, "output": o} for i, o in rows])


def tiny_params(tiny_lm: Path) -> dict[str, Any]:
    return {
        "data": {"dir": "data"},
        "router": {"epochs": 30, "hidden": 32, "min_k": 0},
        "base_model": {"path": str(tiny_lm), "gguf_file": None},
        "arms": {"tasks": {"rewrite": {
            "data": "data/tasks/rewrite", "template": "Rewrite: {input}\nOut:", "metric": "rouge_l",
            "steps": 2, "batch_size": 2, "max_new_tokens": 4, "eval_examples": 1,
            "agents": ["order_status", "returns_refunds"]}}},
        "planner": {"pca_dims": 4, "min_samples_leaf": 1},
        "gate": {"floors": {"router.in_scope_accuracy": 0.0}, "tolerance": 0.02},
        "registry": {"path": "registry"},
    }


def build_tiny_bundle(workdir: Path, tiny_lm: Path, base_model: dict[str, Any] | None = None) -> Path:
    """Run the real stages on tiny data in `workdir`; return the bundle folder (its arm on
    `tiny_lm`, or on the `base_model` params section given, e.g. the packaged SmolLM2)."""
    from amo.config import parse_params
    from amo.stages import (
        bundle,
        evaluate,
        export_router,
        finetune_arm,
        fit_planner,
        train_router,
        validate,
    )

    workdir.mkdir(parents=True, exist_ok=True)
    raw = tiny_params(tiny_lm)
    if base_model is not None:
        raw["base_model"] = base_model
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = parse_params(raw)
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        data, router, onnx, planner = Path("data"), Path("artifacts/router"), Path("artifacts/router_onnx"), \
            Path("artifacts/planner")
        write_tiny_data(data)
        validate.run(params.data, data, Path("metrics/validation.json"), Path("metrics/validation"))
        train_router.run(params, data, router, Path("metrics/train_router.json"))
        export_router.run(params, router, onnx, Path("metrics/export_router.json"))
        finetune_arm.run(params, "rewrite", Path("artifacts/arms/rewrite"), Path("metrics/arms/rewrite.json"))
        fit_planner.run(params, data, router, onnx, planner, Path("metrics/fit_planner.json"))
        evaluate.run(params, data, router, onnx, planner, Path("metrics/arms"), Path("metrics/evaluation.json"))
        bundle.run(params, raw, router, onnx, planner, Path("artifacts/arms"), Path("metrics/evaluation.json"),
                   Path("build/bundle"))
    finally:
        os.chdir(previous)
    return workdir / "build" / "bundle"


def variant(bundle: Path, out: Path, name: str, accuracy: float | None = None) -> Path:
    """A copy of `bundle` that is a distinct, valid bundle (its runtime.json names the variant),
    optionally with another router accuracy in its metrics."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(bundle, out)
    runtime = json.loads((out / RUNTIME).read_text())
    runtime["variant"] = name
    (out / RUNTIME).write_text(json.dumps(runtime, indent=2, sort_keys=True) + "\n")
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"] = file_hashes(out)
    manifest["bundle_id"] = f"{manifest['bundle_id']}-{name}"
    if accuracy is not None:
        manifest["metrics"]["router"]["in_scope_accuracy"] = accuracy
    write_manifest(out, manifest)
    return out


def tamper(bundle: Path, kind: str, name: str) -> None:
    """Flip one bit in the middle of file `name` ("byte"), delete it ("missing") or add it ("extra")."""
    target = bundle / name
    if kind == "byte":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    elif kind == "missing":
        target.unlink()
    else:
        target.write_bytes(b"not in the manifest")


def ec_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """A new P-256 key pair as PEM files: (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    folder.mkdir(parents=True, exist_ok=True)
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public
