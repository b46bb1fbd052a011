"""LoRA arms on a tiny base model: adapters change output, round-trip exactly, serve mixed batches."""

import json
import shutil
from pathlib import Path

import pytest

from amo.arms import ArmLoadError, ArmServer, checkpoint_dir, clear_checkpoint, save_arm, train_arm
from amo.config import ArmTaskParams
from amo.data import TaskExample
from amo.models import load_base_model, resolve_base_model

pytestmark = pytest.mark.slow  # LoRA training
TASKS = {
    "shout": ArmTaskParams(data="-", template="Shout: {input}\nOut:", steps=25, lr=1e-2, batch_size=4,
                           max_new_tokens=6, metric="exact"),
    "count": ArmTaskParams(data="-", template="Count: {input}\nOut:", steps=25, lr=1e-2, batch_size=4,
                           max_new_tokens=6, metric="exact", seed=1),
}
EXAMPLES = {
    "shout": [TaskExample(f"say {w}", f"{w} {w} !") for w in ["red", "blue", "green", "tea", "cup", "map"]],
    "count": [TaskExample(f"{n} apples", f"number {n}") for n in range(6)],
}
INPUTS = ["say red", "3 apples", "hello there"]


def base(tiny_lm: Path):
    return load_base_model(resolve_base_model(str(tiny_lm), None))


@pytest.fixture(scope="module")
def arm_dirs(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("arms")
    for name, task in TASKS.items():
        model, tokenizer = base(tiny_lm)
        peft_model, result = train_arm(model, tokenizer, name, task, EXAMPLES[name], log=lambda _: None)
        assert result.steps == task.steps
        save_arm(peft_model, name, task, out / name, {"note": "test"})
    return {name: out / name for name in TASKS}


@pytest.fixture(scope="module")
def server(tiny_lm: Path, arm_dirs: dict[str, Path]) -> ArmServer:
    return ArmServer(*base(tiny_lm), arm_dirs)


def test_saved_arm_has_safetensors_and_rebuild_info(arm_dirs: dict[str, Path]) -> None:
    """An arm folder holds the adapter (safetensors), its config and arm.json with the template."""
    files = {p.name for p in arm_dirs["shout"].iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "arm.json"} <= files


def test_adapter_changes_the_output(server: ArmServer) -> None:
    """The same input gives a different continuation with an arm than with the base model."""
    prompt = TASKS["shout"].template.format(input="say red")
    with_arm = server.invoke([("shout", "say red")], max_new_tokens=6)
    without = server.invoke([(None, prompt)], max_new_tokens=6)
    assert with_arm != without


def test_save_then_load_reproduces_outputs(tiny_lm: Path, arm_dirs: dict[str, Path], server: ArmServer) -> None:
    """A second server loaded from the saved arms gives exactly the same outputs."""
    again = ArmServer(*base(tiny_lm), arm_dirs)
    rows = [("shout", INPUTS[0]), ("count", INPUTS[1])]
    assert again.invoke(rows, 6) == server.invoke(rows, 6)


def test_mixed_batch_matches_each_row_alone(server: ArmServer) -> None:
    """Each row of a mixed batch (two arms and the base model) equals that row run alone."""
    rows = [("shout", INPUTS[0]), ("count", INPUTS[1]), (None, INPUTS[2]), ("count", INPUTS[0])]
    mixed = server.invoke(rows, max_new_tokens=6)
    alone = [server.invoke([row], max_new_tokens=6)[0] for row in rows]
    assert mixed == alone


def test_unknown_arm_is_refused(server: ArmServer) -> None:
    """A request naming an arm that is not loaded fails and lists the known arms."""
    with pytest.raises(KeyError, match="known arms: count, shout"):
        server.invoke([("nope", "x")])


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_adapter_is_refused(tiny_lm: Path, arm_dirs: dict[str, Path], tmp_path: Path,
                                               damage: str) -> None:
    """A missing or corrupt adapter file is refused with an error naming the file."""
    broken = tmp_path / "shout"
    shutil.copytree(arm_dirs["shout"], broken)
    weights = broken / "adapter_model.safetensors"
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ArmLoadError, match=r"adapter_model.safetensors|shout"):
        ArmServer(*base(tiny_lm), {"shout": broken})


class Interrupt(RuntimeError):
    """Stands in for a killed training process."""


def stop_at(stop: int):
    def on_step(step: int) -> None:
        if step == stop:
            raise Interrupt
    return on_step


def adapter_weights(model, name: str) -> dict:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}


def test_interrupted_training_resumes_to_the_same_weights(tiny_lm: Path, tmp_path: Path) -> None:
    """Training stopped at step 7 resumes from its step-6 checkpoint and ends with exactly the
    weights of an uninterrupted run (dropout on, so the RNG state is restored too)."""
    import torch

    task = TASKS["shout"].model_copy(update={"steps": 12, "checkpoint_every": 3, "dropout": 0.2})
    reference, _ = train_arm(*base(tiny_lm), "shout", task, EXAMPLES["shout"], log=lambda _: None)
    expected = adapter_weights(reference, "shout")

    checkpoint = checkpoint_dir(tmp_path / "shout")
    with pytest.raises(Interrupt):
        train_arm(*base(tiny_lm), "shout", task, EXAMPLES["shout"], log=lambda _: None,
                  checkpoint=checkpoint, on_step=stop_at(7))
    assert json.loads((checkpoint / "checkpoint.json").read_text())["step"] == 6
    lines: list[str] = []
    resumed, result = train_arm(*base(tiny_lm), "shout", task, EXAMPLES["shout"], log=lines.append,
                                checkpoint=checkpoint)
    assert result.resumed_from == 6 and any("resuming from step 6/12" in line for line in lines)
    assert any("step 12/12 loss" in line and "left ~0s" in line for line in lines)
    got = adapter_weights(resumed, "shout")
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    clear_checkpoint(checkpoint)
    assert not checkpoint.exists()


def test_checkpoint_from_other_params_is_not_resumed(tiny_lm: Path, tmp_path: Path) -> None:
    """A checkpoint left by a run with other params is discarded and training starts afresh."""
    task = TASKS["count"].model_copy(update={"steps": 6, "checkpoint_every": 2})
    checkpoint = checkpoint_dir(tmp_path / "count")
    with pytest.raises(Interrupt):
        train_arm(*base(tiny_lm), "count", task, EXAMPLES["count"], log=lambda _: None,
                  checkpoint=checkpoint, on_step=stop_at(3))
    lines: list[str] = []
    changed = task.model_copy(update={"lr": 5e-3})
    _, result = train_arm(*base(tiny_lm), "count", changed, EXAMPLES["count"], log=lines.append,
                          checkpoint=checkpoint)
    assert result.resumed_from == 0 and any("starting afresh" in line for line in lines)


def test_arm_json_rebuilds_the_task(arm_dirs: dict[str, Path]) -> None:
    """arm.json carries the template and every training param, enough to rebuild the task."""
    meta = json.loads((arm_dirs["count"] / "arm.json").read_text())
    assert meta["template"] == TASKS["count"].template
    assert ArmTaskParams.model_validate(meta["params"]) == TASKS["count"]


def test_rows_without_an_arm_get_the_plain_base_model(tiny_lm: Path, server: ArmServer) -> None:
    """A row naming no arm in a mixed batch answers exactly as the base model without peft."""
    from amo.arms import generate

    model, tokenizer = base(tiny_lm)
    plain = generate(model, tokenizer, [INPUTS[2]], None, 6)
    mixed = server.invoke([("shout", INPUTS[0]), (None, INPUTS[2]), ("count", INPUTS[1])], max_new_tokens=6)
    assert mixed[1] == plain[0]


@pytest.mark.parametrize("file", ["adapter_config.json", "arm.json"])
def test_missing_or_corrupt_config_is_refused(tiny_lm: Path, arm_dirs: dict[str, Path], tmp_path: Path,
                                              file: str) -> None:
    """A missing or unparsable adapter config or arm.json is refused, naming the file."""
    broken = tmp_path / "count"
    shutil.copytree(arm_dirs["count"], broken)
    (broken / file).write_text("{truncated")
    with pytest.raises(ArmLoadError, match="unreadable file"):
        ArmServer(*base(tiny_lm), {"count": broken})
    (broken / file).unlink()
    with pytest.raises(ArmLoadError, match=f"missing .*{file}"):
        ArmServer(*base(tiny_lm), {"count": broken})


def test_truncated_adapter_weights_are_refused(tiny_lm: Path, arm_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Adapter weights cut short (an interrupted copy) are refused before serving."""
    broken = tmp_path / "count"
    shutil.copytree(arm_dirs["count"], broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ArmLoadError, match="count"):
        ArmServer(*base(tiny_lm), {"count": broken})
