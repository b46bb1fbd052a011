"""Warm-started router training: the retrain starts from the champion's ranker weights and trains
only on the rows it never saw plus a replay sample, goes cold (and says why) when the encoder
changed, and a bundle carries what the next retrain warm-starts from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from amo.config import Params, parse_params, read_params_file
from amo.data import Agent, RoutingExample
from amo.embeddings import text_keys
from amo.ranker import CROSSFIT, AgentRanker
from amo.routing import AgentIndex, grade_matrix
from amo.stages.train_router import LINEAGE, champion_ranker

ROOT = Path(__file__).resolve().parents[1]
DIM = 16
AGENTS = [Agent(f"agent_{i}", f"agent number {i} description", domain=f"d{i}") for i in range(5)]


def rows_and_vectors(seed: int, per_agent: int) -> tuple[list[RoutingExample], np.ndarray, np.ndarray]:
    """Prompts near their agent's centre (centres fixed across seeds), out-of-scope noise too."""
    centres = np.random.default_rng(0).normal(size=(len(AGENTS), DIM))
    rng = np.random.default_rng(seed)
    rows, x = [], []
    for i, agent in enumerate(AGENTS):
        for _ in range(per_agent):
            rows.append(RoutingExample(f"s{seed}-p{i}-{len(rows)}", {agent.id: 1}))
            x.append(centres[i] + 0.5 * rng.normal(size=DIM))
    for _ in range(per_agent):
        rows.append(RoutingExample(f"s{seed}-oos-{len(rows)}", {}))
        x.append(rng.normal(size=DIM))
    v = np.array(x, np.float32)
    return rows, v / np.linalg.norm(v, axis=1, keepdims=True), centres / np.linalg.norm(centres, axis=1, keepdims=True)


def ranker(**kw) -> AgentRanker:
    return AgentRanker(**{"hidden": 8, "epochs": 6, "batch_size": 16, "folds": 2, "group_by": "agent",
                          "patience": 2, **kw})


@pytest.fixture(scope="module")
def champion() -> tuple[AgentRanker, AgentIndex, list[RoutingExample], np.ndarray]:
    rows, x, centres = rows_and_vectors(1, 20)
    index = AgentIndex(AGENTS, centres.astype(np.float32))
    val_rows, x_val, _ = rows_and_vectors(2, 6)
    keys = text_keys([r.prompt for r in rows])
    parent = ranker(epochs=2).fit(index, x, grade_matrix(rows, index.ids),
                                  val=(x_val, grade_matrix(val_rows, index.ids)), keys=keys)
    return parent, index, rows, x


def test_warm_start_begins_at_the_parents_weights_and_moves_from_them(champion, monkeypatch) -> None:
    """The first weights the warm fit trains are the champion's, and training changes them."""
    parent, index, rows, x = champion
    new_rows, x_new, _ = rows_and_vectors(3, 4)
    val_rows, x_val, _ = rows_and_vectors(4, 6)
    all_rows, all_x = rows + new_rows, np.concatenate([x, x_new])
    started: list[dict[str, torch.Tensor]] = []
    load = torch.nn.Module.load_state_dict

    def spy(module, state, *args, **kwargs):
        if not started:
            started.append({k: v.clone() for k, v in state.items()})
        return load(module, state, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", spy)
    child = ranker(lr=0.05).fit(index, all_x, grade_matrix(all_rows, index.ids),
                                val=(x_val, grade_matrix(val_rows, index.ids)),
                                keys=text_keys([r.prompt for r in all_rows]), parent=parent, replay=1.0)
    for name, tensor in parent.model_.state_dict().items():
        assert torch.equal(started[0][name], tensor)
    assert any(not torch.equal(tensor, parent.model_.state_dict()[name])
               for name, tensor in child.model_.state_dict().items())
    assert child.generation_ == 1


def test_warm_start_trains_on_new_rows_plus_replay_only(champion) -> None:
    """New rows are those whose key the champion lacks; replay adds `replay` old rows per new one."""
    parent, index, rows, x = champion
    new_rows, x_new, _ = rows_and_vectors(5, 2)  # 12 new rows
    all_rows, all_x = rows + new_rows, np.concatenate([x, x_new])
    child = ranker().fit(index, all_x, grade_matrix(all_rows, index.ids), keys=text_keys([r.prompt for r in all_rows]),
                         parent=parent, replay=2.0)
    assert child.warm_ is not None
    assert (child.warm_["new_rows"], child.warm_["replay_rows"], child.warm_["old_rows"]) == (12, 24, len(rows))
    # The champion's rows keep their folds; its fold classifiers are reused as they were.
    assert child.crossfit_ is not None and parent.crossfit_ is not None
    assert np.array_equal(child.crossfit_.folds[:len(rows)], parent.crossfit_.folds)
    assert all(np.array_equal(a.weights, b.weights)
               for a, b in zip(child.crossfit_.classifiers, parent.crossfit_.classifiers))


def test_warm_fit_without_new_rows_keeps_the_parents_ranker(champion) -> None:
    """Nothing new to learn: no epoch runs and the champion's weights are kept."""
    parent, index, rows, x = champion
    child = ranker().fit(index, x, grade_matrix(rows, index.ids), keys=text_keys([r.prompt for r in rows]),
                         parent=parent)
    assert child.history_ == []
    assert all(torch.equal(v, parent.model_.state_dict()[k]) for k, v in child.model_.state_dict().items())


def test_save_load_keeps_the_crossfit_state(champion, tmp_path: Path) -> None:
    """A saved ranker reloads with its rows' keys, folds and fold classifiers, so it can be a parent."""
    parent = champion[0]
    parent.save(tmp_path)
    again = AgentRanker.load(tmp_path)
    assert again.crossfit_ is not None and parent.crossfit_ is not None and (tmp_path / CROSSFIT).is_file()
    assert np.array_equal(again.crossfit_.keys, parent.crossfit_.keys)
    assert again.crossfit_.group_folds == parent.crossfit_.group_folds
    assert ranker().compatible(again) is None
    assert "hidden" in (ranker(hidden=4).compatible(again) or "")


def _champion_dir(champion, tmp_path: Path, encoder: str) -> Path:
    folder = tmp_path / "champion"
    champion[0].save(folder)
    (folder / LINEAGE).write_text(json.dumps({"mode": "cold", "encoder": encoder}))
    return folder


def params(**warm) -> Params:
    raw = read_params_file(ROOT / "params.yaml")
    raw["router"] = {**raw["router"], "hidden": 8, "folds": 2, "dropout": 0.0,
                     "warm_start": {**raw["router"]["warm_start"], "min_rows": 0, **warm}}
    return parse_params(raw)


def test_champion_with_the_same_encoder_warm_starts(champion, tmp_path: Path) -> None:
    """A compatible champion embedded by this encoder is the parent."""
    parent, lineage = champion_ranker(params(), _champion_dir(champion, tmp_path, "enc-a"), "enc-a")
    assert parent is not None and lineage["mode"] == "warm" and lineage["reason"] is None


@pytest.mark.parametrize(("warm", "encoder", "why"), [
    ({}, "enc-b", "the encoder changed"),
    ({"enabled": False}, "enc-a", "enabled is false"),
    ({"min_rows": 10_000}, "enc-a", "a cold retrain is cheap"),
])
def test_cold_retrains_say_why(champion, tmp_path: Path, warm: dict, encoder: str, why: str) -> None:
    """A changed encoder, warm start off or a small champion: cold, with the reason recorded."""
    parent, lineage = champion_ranker(params(**warm), _champion_dir(champion, tmp_path, "enc-a"), encoder)
    assert parent is None and lineage["mode"] == "cold" and why in lineage["reason"]


def test_no_champion_is_a_cold_retrain() -> None:
    """Nothing promoted yet: cold, said so."""
    parent, lineage = champion_ranker(params(), None, "enc-a")
    assert parent is None and "no champion" in lineage["reason"]


@pytest.mark.slow  # the real encoder, two tiny train_router runs
def test_train_router_stage_warm_starts_from_a_champion_folder_and_records_it(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A second train_router run given the first's folder warm-starts from it: lineage.json names
    the parent and the metrics count the new rows; without a champion the metrics say why it is cold."""
    import yaml
    from tiny_bundle import tiny_params, write_tiny_data

    from amo.data import read_routing
    from amo.stages import train_router

    monkeypatch.chdir(tmp_path)
    raw = tiny_params(tmp_path / "no-lm")
    raw["router"] = {**raw["router"], "folds": 2, "warm_start": {"min_rows": 0}}
    params = parse_params(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    data = Path("data")
    write_tiny_data(data)
    cold = train_router.run(params, data, Path("champion"), Path("m1.json"))
    assert cold["warm_start"]["mode"] == "cold" and "no champion" in cold["warm_start"]["reason"]
    assert json.loads(Path("champion/lineage.json").read_text())["parent"] is None
    routing = data / "routing" / "train.jsonl"
    extra = [{"prompt": "where has my parcel 4411 got to", "labels": {"order_status": 1}},
             {"prompt": "refund my cracked plate", "labels": {"returns_refunds": 1}}]
    routing.write_text(routing.read_text() + "".join(json.dumps(r) + "\n" for r in extra))
    warm = train_router.run(params, data, Path("child"), Path("m2.json"), champion=Path("champion"))
    lineage = json.loads(Path("child/lineage.json").read_text())
    assert warm["warm_start"]["mode"] == "warm" and warm["warm_start"]["reason"] is None
    assert (lineage["parent"]["path"], lineage["new_rows"], lineage["generation"]) == ("champion", 2, 1)
    assert lineage["rows"] == len(read_routing(routing))


def test_crossfit_file_is_the_same_bytes_from_every_process(champion, tmp_path: Path) -> None:
    """safetensors orders metadata by a hash map that changes from process to process: the cross-fit
    file must write one metadata entry, or a forced re-run's router folder differs byte for byte
    (test_end_to_end's forced re-run caught it). Saved in two fresh interpreters, the bytes agree."""
    import subprocess
    import sys

    champion[0].save(tmp_path / "first")
    code = ("import sys; from pathlib import Path; from amo.ranker import AgentRanker; "
            "AgentRanker.load(Path(sys.argv[1])).save(Path(sys.argv[2]))")
    for out in ("second", "third"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "first"), str(tmp_path / out)], check=True)
    first = (tmp_path / "first" / CROSSFIT).read_bytes()
    assert first == (tmp_path / "second" / CROSSFIT).read_bytes() == (tmp_path / "third" / CROSSFIT).read_bytes()
