"""LoRA arms on a tiny base model: adapters change output, round-trip exactly, serve mixed batches."""

import shutil
from pathlib import Path

import pytest

from amo.arms import ArmLoadError, ArmServer, save_arm, train_arm
from amo.config import ArmTaskParams
from amo.data import TaskExample
from amo.models import load_base_model, resolve_base_model

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
    with pytest.raises(ArmLoadError, match="adapter_model.safetensors|shout"):
        ArmServer(*base(tiny_lm), {"shout": broken})
