"""Bundles and the registry: verification refuses tampering, the gate protects the champion,
`current` switches only to whole bundles, rollback restores the previous one."""

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from tiny_bundle import ec_keys

from amo.bundle import MANIFEST, BundleError, file_hashes, verify_bundle, write_manifest
from amo.config import GateParams
from amo.registry import Decision, Registry


def fake_bundle(root: Path, bundle_id: str, accuracy: float) -> Path:
    """A minimal bundle: a few files and a manifest whose hashes match them."""
    bundle = root / bundle_id
    (bundle / "router").mkdir(parents=True)
    (bundle / "router" / "router.onnx").write_bytes(b"onnx-bytes-" + bundle_id.encode())
    (bundle / "planner.json").write_text('{"tree": []}')
    manifest = {"bundle_id": bundle_id, "created": "2026-01-01T00:00:00Z", "models": {},
                "metrics": {"router": {"in_scope_accuracy": accuracy}}, "files": file_hashes(bundle)}
    write_manifest(bundle, manifest)
    return bundle


GATE = GateParams(floors={"router.in_scope_accuracy": 0.7}, tolerance=0.02)


@pytest.mark.parametrize("tamper", ["byte", "missing", "extra"])
def test_tampered_bundle_is_refused(tmp_path: Path, tamper: str) -> None:
    """A changed byte, a missing file or an extra file fails verification and promotion."""
    bundle = fake_bundle(tmp_path, "b1", 0.9)
    verify_bundle(bundle)
    target = bundle / "router" / "router.onnx"
    if tamper == "byte":
        data = bytearray(target.read_bytes())
        data[3] ^= 1
        target.write_bytes(bytes(data))
    elif tamper == "missing":
        target.unlink()
    else:
        (bundle / "router" / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match={"byte": "checksum", "missing": "missing", "extra": "extra"}[tamper]):
        verify_bundle(bundle)
    registry = Registry(tmp_path / "registry")
    with pytest.raises(BundleError):
        registry.promote(bundle, GATE)
    assert registry.current_id() is None


def test_gate_floor_and_champion_regression(tmp_path: Path) -> None:
    """Below the floor or worse than the champion beyond tolerance is rejected; champion stays."""
    registry = Registry(tmp_path / "registry")
    assert registry.promote(fake_bundle(tmp_path, "good", 0.90), GATE).accepted
    low = registry.promote(fake_bundle(tmp_path, "low", 0.60), GATE)
    assert not low.accepted and any("floor" in r and "FAILED" in r for r in low.reasons)
    worse = registry.promote(fake_bundle(tmp_path, "worse", 0.85), GATE)
    assert not worse.accepted and any("champion" in r and "FAILED" in r for r in worse.reasons)
    assert registry.current_id() == "good"
    assert not (registry.bundles / "low").exists()
    assert [e["action"] for e in registry.history()] == ["promote", "reject", "reject"]
    assert registry.promote(fake_bundle(tmp_path, "close", 0.89), GATE).accepted


def test_promote_then_rollback(tmp_path: Path) -> None:
    """Rollback points `current` back at the previously promoted bundle, verified."""
    registry = Registry(tmp_path / "registry")
    registry.promote(fake_bundle(tmp_path, "one", 0.8), GATE)
    registry.promote(fake_bundle(tmp_path, "two", 0.85), GATE)
    assert registry.current_id() == "two"
    assert registry.rollback() == "one"
    assert registry.current_id() == "one"
    assert verify_bundle(registry.current_path())["bundle_id"] == "one"
    assert registry.rollback(to="two") == "two"
    shutil.rmtree(registry.bundles / "one")
    with pytest.raises(BundleError):
        registry.rollback(to="one")
    assert registry.current_id() == "two"


# -- registry URLs and the CLI ------------------------------------------------------------------
def test_registry_by_file_url_and_object_store(tmp_path: Path) -> None:
    """A file:// URL is the local registry (atomic rename); memory:// stands in for an object
    store: promote, list, rollback and verified downloads work the same."""
    local = Registry(f"file://{tmp_path / 'reg'}")
    assert local.local and local.root == tmp_path / "reg"
    local.promote(fake_bundle(tmp_path, "one", 0.8), GATE)
    assert json.loads((tmp_path / "reg" / "current.json").read_text())["bundle_id"] == "one"

    store = Registry("memory://amo-test/registry", cache_dir=tmp_path / "cache")
    assert not store.local
    store.promote(fake_bundle(tmp_path / "s", "one", 0.8), GATE)
    store.promote(fake_bundle(tmp_path / "s", "two", 0.85), GATE)
    assert [(r["bundle_id"], r["current"]) for r in store.list()] == [("one", False), ("two", True)]
    assert verify_bundle(store.current_path())["bundle_id"] == "two"
    assert store.current_path() == tmp_path / "cache" / "two"
    assert store.rollback() == "one" and store.current_id() == "one"
    assert [e["action"] for e in store.history()] == ["promote", "promote", "rollback"]
    store.fs.pipe_file("amo-test/registry/bundles/two/planner.json", b'{"tree": [1]}')
    with pytest.raises(BundleError, match=r"checksum mismatch in planner.json"):
        store.rollback(to="two")
    assert store.current_id() == "one"


def cli(params: Path, *args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from amo.cli import app

    result = CliRunner().invoke(app, ["--params", str(params), *args])
    return result.exit_code, result.output


def _cli_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: str = "registry") -> Path:
    """A params.yaml for the CLI in `tmp_path` (the working folder: no test data there, so the
    gate compares the manifests' metrics), its registry at `registry`."""
    import yaml

    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    raw = {"arms": {"tasks": {"t": {"data": "d", "template": "{input}"}}},
           "gate": {"floors": {"router.in_scope_accuracy": 0.7}, "tolerance": 0.02},
           "registry": {"path": registry}}
    params.write_text(yaml.safe_dump(raw))
    return params


def test_cli_promote_list_verify_rollback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`amo promote/bundles list/bundles verify/rollback` drive a file:// registry end to end,
    printing the gate's decision and refusing a failing or tampered candidate (exit 3 for a
    rejection, 1 for an error)."""
    params = _cli_params(tmp_path, monkeypatch, f"file://{tmp_path / 'reg'}")
    code, out = cli(params, "promote", str(fake_bundle(tmp_path / "candidates", "first", 0.8)))
    assert code == 0 and "PROMOTED first" in out and "ok: router.in_scope_accuracy = 0.8000 >= floor 0.7" in out
    code, out = cli(params, "promote", str(fake_bundle(tmp_path / "candidates", "weak", 0.5)))
    assert code == 3 and "REJECTED weak" in out and "FAILED: router.in_scope_accuracy = 0.5000 < floor" in out
    assert "basis: metrics stored in each manifest" in out
    code, out = cli(params, "promote", str(fake_bundle(tmp_path / "candidates", "second", 0.81)))
    assert code == 0 and "vs champion 0.8000 (within tolerance" in out
    code, out = cli(params, "bundles", "list")
    assert code == 0 and out.splitlines() == [
        "  first  created 2026-01-01T00:00:00Z  router acc 0.800",
        "* second  created 2026-01-01T00:00:00Z  router acc 0.810"]
    code, out = cli(params, "bundles", "verify", "second")
    assert code == 0 and "bundle second: 2 files verified" in out
    code, out = cli(params, "rollback")
    assert code == 0 and "current bundle is now first" in out
    code, out = cli(params, "rollback", "--to", "second")
    assert code == 0 and "current bundle is now second" in out
    (tmp_path / "reg" / "bundles" / "first" / "planner.json").write_text("{}")
    code, out = cli(params, "bundles", "verify", "first")
    assert code == 1 and "checksum mismatch in planner.json" in out
    code, out = cli(params, "rollback", "--to", "first")
    assert code == 1 and "failed verification" in out
    history = [json.loads(line) for line in (tmp_path / "reg" / "history.jsonl").read_text().splitlines()]
    assert [(e["action"], e["bundle_id"]) for e in history] == [
        ("promote", "first"), ("reject", "weak"), ("promote", "second"), ("rollback", "first"),
        ("rollback", "second")]
    assert any("FAILED" in reason for reason in history[1]["reasons"])


# -- kill -9 during promotion -------------------------------------------------------------------
KILL_POINTS = 20


def roomy_bundle(root: Path, bundle_id: str, accuracy: float) -> Path:
    """A fake bundle with a dozen files, so copying it in passes many kill points."""
    bundle = fake_bundle(root, bundle_id, accuracy)
    for i in range(10):
        (bundle / "arms" / f"part{i}.bin").parent.mkdir(exist_ok=True)
        (bundle / "arms" / f"part{i}.bin").write_bytes(bytes([i]) * 1000 + bundle_id.encode())
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"] = file_hashes(bundle)
    write_manifest(bundle, manifest)
    return bundle


def _promote_and_pause(root: Path, candidate: Path, stop_at: int, conn: object) -> None:
    """In the forked child: promote, announcing checkpoint `stop_at` and sleeping there."""
    import time

    hits = 0

    def hook(step: str) -> None:
        nonlocal hits
        if hits == stop_at:
            conn.send(step)  # type: ignore[attr-defined]
            time.sleep(120)
        hits += 1

    Registry(root, checkpoint=hook).promote(candidate, GATE)
    conn.send("finished")  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def crash_kit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("crash")
    old, new = roomy_bundle(root, "old", 0.8), roomy_bundle(root, "new", 0.85)
    steps: list[str] = []
    registry = Registry(root / "probe", checkpoint=steps.append)
    registry.promote(old, GATE)
    steps.clear()
    registry.promote(new, GATE)
    return old, new, steps


def test_promotion_has_enough_kill_points(crash_kit: tuple[Path, Path, list[str]]) -> None:
    """Promotion passes at least 20 distinct steps: verify, gate, each file copied, the copy
    verified and renamed, the pointer written, fsynced and renamed, history recorded."""
    steps = crash_kit[2]
    assert len(steps) >= KILL_POINTS and len(set(steps)) == len(steps)
    assert steps[0] == "candidate verified" and steps[-1] == "history recorded"
    assert "current.json: renamed" in steps and "bundle renamed into place" in steps


@pytest.mark.parametrize("point", range(KILL_POINTS))
def test_kill_during_promotion_leaves_a_whole_bundle(tmp_path: Path, point: int,
                                                     crash_kit: tuple[Path, Path, list[str]]) -> None:
    """kill -9 of the promoting process at any step leaves `current` naming a whole, verified
    bundle (old before the pointer's rename, new after), and the next promotion succeeds."""
    import multiprocessing
    import os
    import signal

    old, new, steps = crash_kit
    stop_at = round(point * (len(steps) - 1) / (KILL_POINTS - 1))
    root = tmp_path / "registry"
    Registry(root).promote(old, GATE)
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    process = context.Process(target=_promote_and_pause, args=(root, new, stop_at, child))
    process.start()
    try:
        assert parent.poll(60), "the child never reached its kill point"
        assert parent.recv() == steps[stop_at]
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.join(30)
    assert process.exitcode == -signal.SIGKILL
    registry = Registry(root)
    expected = "new" if stop_at >= steps.index("current.json: renamed") else "old"
    assert registry.current_id() == expected
    assert verify_bundle(registry.current_path())["bundle_id"] == expected
    listed = registry.list()
    assert {row["bundle_id"] for row in listed} <= {"old", "new"}
    assert [row["bundle_id"] for row in listed if row["current"]] == [expected]
    for row in listed:  # a listed bundle is always whole; a cut-short copy stays hidden
        registry.verify(row["bundle_id"])
    assert registry.promote(new, GATE).accepted and registry.current_id() == "new"
    registry.verify("new")


def test_data_hash_from_data_dvc_or_dvc_lock(tmp_path: Path) -> None:
    """The manifest's data hash comes from data.dvc, else from dvc.lock's validate stage."""
    from amo.bundle import data_hash

    lock = tmp_path / "dvc.lock"
    lock.write_text("schema: '2.0'\nstages:\n  validate:\n    cmd: amo validate\n    deps:\n"
                    "    - path: data\n      hash: md5\n      md5: abc.dir\n")
    assert data_hash(tmp_path / "data.dvc", lock) == "abc.dir"
    (tmp_path / "data.dvc").write_text("outs:\n- md5: def.dir\n  path: data\n")
    assert data_hash(tmp_path / "data.dvc", lock) == "def.dir"
    assert data_hash(tmp_path / "none.dvc", tmp_path / "none.lock") is None


def test_changed_manifest_is_refused(tmp_path: Path) -> None:
    """Raising a metric in manifest.json breaks its digest: verification and promotion refuse it."""
    bundle = fake_bundle(tmp_path, "b1", 0.5)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["metrics"]["router"]["in_scope_accuracy"] = 0.99
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest.json was changed"):
        verify_bundle(bundle)
    with pytest.raises(BundleError, match=r"manifest.json was changed"):
        Registry(tmp_path / "registry").promote(bundle, GATE)


def test_gate_judges_each_arm_against_the_base_model_and_the_champion() -> None:
    """An arm scoring below the base model, or beyond tolerance below the champion's arm, fails
    the gate by name; one that gains passes."""
    from amo.registry import gate

    def metrics(arm: float, base: float) -> dict:
        return {"arms": {"rewrite": {"arm": {"rouge_l": arm, "examples": 8}, "base": {"rouge_l": base, "examples": 8},
                                     "metric": "rouge_l"}}}

    params = GateParams(floors={}, tolerance=0.02)
    worse_than_base = gate(metrics(0.0, 0.28), None, params)
    assert worse_than_base == [(False, "arms.rewrite = 0.0000 vs base model 0.2800 (gains less than 0.0)")]
    assert all(ok for ok, _ in gate(metrics(0.9, 0.28), metrics(0.91, 0.28), params))
    regressed = gate(metrics(0.8, 0.28), metrics(0.9, 0.28), params)
    assert [ok for ok, _ in regressed] == [True, False] and "vs champion 0.9000 (beyond" in regressed[1][1]
    legacy = {"arms": {"rewrite": {"arm": {"rouge_l": 0.5, "examples": 8}, "base": {"rouge_l": 0.1, "examples": 8}}}}
    assert gate(legacy, None, params) == [(True, "arms.rewrite = 0.5000 vs base model 0.1000 (gains 0.0)")]


def test_gate_falls_back_to_stored_metrics_for_a_champion_it_cannot_rescore(tmp_path: Path) -> None:
    """A champion this amo cannot load (an older bundle format) is judged by its stored metrics,
    and the decision says so, instead of failing every promotion after an upgrade."""
    registry = Registry(tmp_path / "registry")
    registry.promote(fake_bundle(tmp_path, "old", 0.80), GATE)

    def assess(bundle: Path) -> dict:
        if bundle.name == "old":
            raise FileNotFoundError("router/classifier.safetensors")
        return {"router": {"in_scope_accuracy": 0.79}}

    decision = registry.promote(fake_bundle(tmp_path, "new", 0.10), GATE, assess=assess)
    assert decision.accepted and decision.measured["candidate"]["router"]["in_scope_accuracy"] == 0.79
    assert "champion old cannot be re-scored by this amo (FileNotFoundError" in decision.reasons[0]
    assert "vs champion 0.8000 (within tolerance" in "\n".join(decision.reasons)


# -- registry safety (issue 14) ------------------------------------------------------------------
def renamed(bundle: Path, bundle_id: str) -> Path:
    """`bundle` with another id in its manifest and the digest recomputed (a valid seal)."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["bundle_id"] = bundle_id
    write_manifest(bundle, {k: v for k, v in manifest.items() if k != "digest"})
    return bundle


@pytest.mark.parametrize("bad_id", ["../../../../tmp/x", "../../escaped", "a/b", ".hidden", "..", "x" * 200, ""])
def test_bundle_id_that_is_a_path_is_refused_by_name(tmp_path: Path, bad_id: str) -> None:
    """A manifest whose bundle id is not a plain name (a path, a dot-name, too long) is refused by
    name, and nothing is written outside the registry nor pointed to."""
    registry = Registry(tmp_path / "registry")
    bundle = renamed(fake_bundle(tmp_path / "candidates", "cand", 0.9), bad_id)
    with pytest.raises(BundleError, match="bundle id"):
        registry.promote(bundle, GATE)
    assert registry.pointer() is None
    assert [p.name for p in tmp_path.iterdir()] == ["candidates"]
    with pytest.raises(BundleError, match="bundle id"):
        registry.rollback(to=bad_id or "..")


def test_pointer_naming_a_path_is_refused(tmp_path: Path) -> None:
    """A current.json naming `../x` is not followed out of the registry: it is refused by name."""
    registry = Registry(tmp_path / "registry")
    registry.promote(fake_bundle(tmp_path, "one", 0.8), GATE)
    shutil.copytree(registry.bundles / "one", tmp_path / "x")
    (registry.root / "current.json").write_text(json.dumps({"bundle_id": "../../x"}))
    with pytest.raises(BundleError, match=r"bundle id '../../x'"):
        registry.current_path()


def test_registry_paths_stay_inside_the_registry(tmp_path: Path) -> None:
    """Every path the registry builds from a name is checked to stay inside it."""
    registry = Registry(tmp_path / "registry")
    (tmp_path / "registry" / "bundles").mkdir(parents=True)
    (tmp_path / "registry" / "bundles" / "link").symlink_to(tmp_path)
    with pytest.raises(BundleError, match="outside the registry"):
        registry.bundle_path("link")



@pytest.mark.parametrize("store", ["local", "object store"])
def test_corrupt_stored_copy_is_replaced_when_promoted_again(tmp_path: Path, store: str) -> None:
    """Promoting an id already in the registry re-verifies the stored copy; a corrupt one is
    replaced from the verified candidate, so `current` never names a corrupt bundle."""
    if store == "local":
        registry = Registry(tmp_path / "registry")
    else:
        registry = Registry(f"memory://amo-test-{tmp_path.name}/registry", cache_dir=tmp_path / "cache")
    one = fake_bundle(tmp_path, "one", 0.8)
    registry.promote(one, GATE)
    registry.promote(fake_bundle(tmp_path, "two", 0.81), GATE)
    registry.fs.pipe_file(registry._key("bundles", "one", "planner.json"), b'{"tree": "corrupt"}')
    registry.fs.pipe_file(registry._key("bundles", "one", "stray.bin"), b"x")
    decision = registry.promote(one, GATE)
    assert decision.accepted and registry.current_id() == "one"
    assert registry.verify("one")["bundle_id"] == "one"
    assert any("stored copy failed verification" in reason for reason in decision.reasons)
    assert [row["bundle_id"] for row in registry.list()] == ["one", "two"]
    if store == "local":
        assert sorted(p.name for p in registry.bundles.iterdir()) == ["one", "two"]


# -- promotions at once, and of the current bundle -------------------------------------------------
def _in_thread(results: dict[str, object], key: str, action: Callable[[], object]) -> threading.Thread:
    """Run `action` in a thread, storing its result (or the exception it raised) under `key`."""
    def run() -> None:
        try:
            results[key] = action()
        except Exception as exc:  # noqa: BLE001 -- the test asserts on it
            results[key] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _pausing_at(prefix: str, reached: threading.Event, release: threading.Event) -> Callable[[str], None]:
    """A checkpoint hook that stops the promotion at the first step starting with `prefix`."""
    def hook(step: str) -> None:
        if step.startswith(prefix) and not reached.is_set():
            reached.set()
            release.wait(30)

    return hook


def test_promotions_at_once_are_serialised_against_the_latest_champion(tmp_path: Path) -> None:
    """A promotion started while another is between its gate and its pointer waits for it, and is
    gated against the bundle it promoted, not the champion both started from."""
    root = tmp_path / "registry"
    Registry(root).promote(fake_bundle(tmp_path, "old", 0.80), GATE)
    reached, release, results = threading.Event(), threading.Event(), {}
    first = _in_thread(results, "better", lambda: Registry(root, checkpoint=_pausing_at(
        "gate decided", reached, release)).promote(fake_bundle(tmp_path, "better", 0.90), GATE))
    assert reached.wait(30)
    second = _in_thread(results, "close", lambda: Registry(root).promote(fake_bundle(tmp_path, "close", 0.85), GATE))
    second.join(1.0)  # it waits for the lock while the first one is paused
    release.set()
    first.join(30)
    second.join(30)
    better, close = results["better"], results["close"]
    assert isinstance(better, Decision) and isinstance(close, Decision), results
    assert better.accepted and better.champion == "old"
    assert close.champion == "better" and not close.accepted
    registry = Registry(root)
    assert registry.current_id() == "better"
    assert [(e["action"], e["bundle_id"], e["previous"]) for e in registry.history()] == [
        ("promote", "old", None), ("promote", "better", "old"), ("reject", "close", "better")]


def test_same_bundle_promoted_twice_at_once(tmp_path: Path) -> None:
    """The same bundle promoted twice at once is copied in once: the second promotion waits, then
    finds it current and changes nothing; no `.partial` folder or temp file is left behind."""
    root = tmp_path / "registry"
    Registry(root).promote(fake_bundle(tmp_path, "old", 0.80), GATE)
    candidate = roomy_bundle(tmp_path, "new", 0.85)
    reached, release, results = threading.Event(), threading.Event(), {}
    first = _in_thread(results, "first", lambda: Registry(root, checkpoint=_pausing_at(
        "copy arms", reached, release)).promote(candidate, GATE))
    assert reached.wait(30)
    second = _in_thread(results, "second", lambda: Registry(root).promote(candidate, GATE))
    second.join(1.0)
    release.set()
    first.join(30)
    second.join(30)
    assert all(isinstance(d, Decision) and d.accepted for d in results.values()), results
    assert [d.unchanged for d in (results["first"], results["second"])] == [False, True]
    registry = Registry(root)
    assert registry.current_id() == "new" and registry.verify("new")["bundle_id"] == "new"
    assert sorted(p.name for p in registry.bundles.iterdir()) == ["new", "old"]
    assert not [p.name for p in registry.root.iterdir() if p.name.endswith(".tmp")]
    assert [e["action"] for e in registry.history()] == ["promote", "promote"]


def test_promoting_the_current_bundle_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Promoting the bundle that is already current (even with --force) is a no-op that says so:
    `current.json` and the history are untouched, and `amo promote` exits 0."""
    registry = Registry(tmp_path / "registry")
    one = fake_bundle(tmp_path, "one", 0.8)
    registry.promote(one, GATE)
    pointer, history = registry.pointer(), registry.history()
    for force in (False, True):
        decision = registry.promote(one, GATE, force=force)
        assert decision.accepted and decision.unchanged
        assert str(decision).startswith("UNCHANGED one: already the current bundle")
    assert registry.pointer() == pointer and registry.history() == history
    params = _cli_params(tmp_path, monkeypatch)
    code, out = cli(params, "promote", str(one))
    assert code == 0 and "UNCHANGED one: already the current bundle" in out
    assert registry.history() == history


def test_a_rebuild_with_the_current_bundles_contents_changes_nothing(tmp_path: Path) -> None:
    """A re-run of the bundle stage on unchanged inputs gives a new id (its build time) over the
    same files, models and data version: promoting it is a no-op that names the current bundle.
    Other data, or another file, is a real candidate."""
    registry = Registry(tmp_path / "registry")
    one = fake_bundle(tmp_path, "one", 0.8)
    registry.promote(one, GATE)
    history = registry.history()
    manifest = json.loads((one / "manifest.json").read_text())
    again = tmp_path / "again"
    shutil.copytree(one, again)
    write_manifest(again, {**{k: v for k, v in manifest.items() if k != "digest"},
                           "bundle_id": "again", "created": "2026-01-02T00:00:00Z"})
    decision = registry.promote(again, GATE)
    assert decision.accepted and decision.unchanged and registry.current_id() == "one"
    assert str(decision).startswith("UNCHANGED again: the same as one") and registry.history() == history
    other = tmp_path / "other"
    shutil.copytree(one, other)
    write_manifest(other, {**{k: v for k, v in manifest.items() if k != "digest"},
                           "bundle_id": "other", "data_hash": "another-version"})
    decision = registry.promote(other, GATE)
    assert not decision.unchanged and decision.accepted and registry.current_id() == "other"


# -- recovery from a corrupt pointer or a torn history ---------------------------------------------
@pytest.mark.parametrize("pointer", ["{not json", '{"bundle_id": "tw', "", '{"bundle_id": "../../x"}', "[1]"])
def test_recovery_commands_work_from_a_corrupt_pointer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       pointer: str) -> None:
    """With current.json unreadable, `amo route` fails naming the file and the repair (exit 1, no
    traceback), `amo bundles list` lists the bundles with a warning, and `amo rollback` works from
    the bundle history last switched to, saying so."""
    params = _cli_params(tmp_path, monkeypatch)
    for name, accuracy in (("one", 0.8), ("two", 0.81)):
        assert cli(params, "promote", str(fake_bundle(tmp_path / "candidates", name, accuracy)))[0] == 0
    (tmp_path / "registry" / "current.json").write_text(pointer)
    code, out = cli(params, "route", "where is my order")
    assert code == 1 and "current.json" in out and "amo rollback --to" in out and "Traceback" not in out
    code, out = cli(params, "bundles", "list")
    assert code == 0 and "current.json" in out and "no bundle is marked current" in out
    assert [line.split()[0] for line in out.splitlines() if "created" in line] == ["one", "two"]
    code, out = cli(params, "rollback")
    assert code == 0, out
    assert "taking two (the bundle history last switched to) as current" in out
    assert "current bundle is now one" in out
    assert Registry(tmp_path / "registry").current_id() == "one"


def test_recovery_from_a_torn_history_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A torn last line in history.jsonl is skipped by name (rollback still works) and the next
    event is appended on a line of its own, never joined to it."""
    params = _cli_params(tmp_path, monkeypatch)
    for name, accuracy in (("one", 0.8), ("two", 0.81)):
        assert cli(params, "promote", str(fake_bundle(tmp_path / "candidates", name, accuracy)))[0] == 0
    history = tmp_path / "registry" / "history.jsonl"
    with history.open("a") as handle:
        handle.write('{"action": "promote", "bundle_id": "thr')  # a write cut short
    code, out = cli(params, "rollback")
    assert code == 0, out
    assert "skipped history.jsonl line 3" in out and "current bundle is now one" in out
    assert cli(params, "promote", str(fake_bundle(tmp_path / "candidates", "three", 0.82)))[0] == 0
    lines = history.read_text().splitlines()
    assert lines[2] == '{"action": "promote", "bundle_id": "thr'
    assert [json.loads(line)["bundle_id"] for line in lines[3:]] == ["one", "three"]
    registry = Registry(tmp_path / "registry")
    assert [e["bundle_id"] for e in registry.history()] == ["one", "two", "one", "three"]


def test_rollback_skips_an_earlier_bundle_that_fails_verification(tmp_path: Path) -> None:
    """Rollback passes over an earlier bundle that no longer verifies, naming it, to the one before."""
    registry = Registry(tmp_path / "registry")
    for name, accuracy in (("one", 0.8), ("two", 0.81), ("three", 0.82)):
        registry.promote(fake_bundle(tmp_path, name, accuracy), GATE)
    (registry.bundles / "two" / "planner.json").write_text("{}")
    said: list[str] = []
    assert registry.rollback(say=said.append) == "one"
    assert any(note.startswith("skipped two:") and "checksum mismatch in planner.json" in note for note in said)


# -- amo bundles gc -------------------------------------------------------------------------------
def test_gc_keeps_the_current_and_the_last_n_and_removes_leftovers(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`amo bundles gc --keep 2` keeps the current bundle and the two history switched to last,
    removes older bundles, bundles history never named, `.partial`/`.corrupt` folders and `.tmp`
    files, prints each removal, and leaves history untouched."""
    params = _cli_params(tmp_path, monkeypatch)
    for i, name in enumerate(["a", "b", "c", "d"]):
        assert cli(params, "promote", str(fake_bundle(tmp_path / "candidates", name, 0.8 + i / 100)))[0] == 0
    assert cli(params, "rollback", "--to", "b")[0] == 0
    registry = Registry(tmp_path / "registry")
    shutil.copytree(registry.bundles / "a", registry.bundles / ".e.partial")
    shutil.copytree(registry.bundles / "a", registry.bundles / ".c.corrupt")
    (registry.root / ".current.json.999.tmp").write_text("{")
    shutil.copytree(fake_bundle(tmp_path / "candidates", "orphan", 0.9), registry.bundles / "orphan")
    history = registry.history()
    code, out = cli(params, "bundles", "gc", "--keep", "2", "--dry-run")
    assert code == 0 and "would remove bundles/a" in out and (registry.bundles / "a").is_dir()
    code, out = cli(params, "bundles", "gc", "--keep", "2")
    assert code == 0, out
    assert sorted(line for line in out.splitlines() if line.startswith("removed")) == [
        "removed .current.json.999.tmp", "removed bundles/.c.corrupt", "removed bundles/.e.partial",
        "removed bundles/a", "removed bundles/c", "removed bundles/orphan"]
    assert "kept b, d" in out
    assert sorted(p.name for p in registry.bundles.iterdir()) == ["b", "d"]
    assert registry.current_id() == "b" and registry.history() == history
    assert cli(params, "bundles", "gc", "--keep", "2")[1].strip() == "nothing to remove (kept b, d)"
    code, out = cli(params, "bundles", "gc", "--keep", "0")
    assert code != 0 and "--keep" in out


def test_gc_never_removes_the_current_bundle(tmp_path: Path) -> None:
    """The current bundle is kept even when it is not among the last N, and when current.json is
    unreadable the bundle history last switched to is kept in its place."""
    registry = Registry(tmp_path / "registry")
    for i, name in enumerate(["a", "b", "c"]):
        registry.promote(fake_bundle(tmp_path, name, 0.8 + i / 100), GATE)
    registry.rollback(to="a")
    registry.promote(fake_bundle(tmp_path, "d", 0.9), GATE)
    (registry.root / "current.json").write_text(json.dumps({"bundle_id": "a"}))  # pointed back by hand
    assert registry.gc(keep=1).removed == ["bundles/b", "bundles/c"]
    assert sorted(p.name for p in registry.bundles.iterdir()) == ["a", "d"]
    (registry.root / "current.json").write_text("{torn")
    assert registry.gc(keep=1).removed == ["bundles/a"]
    assert [p.name for p in registry.bundles.iterdir()] == ["d"]


def test_gc_on_an_object_store(tmp_path: Path) -> None:
    """On an object store gc removes older bundles and bundle folders without a manifest (uploads
    cut short), and keeps the current one."""
    store = Registry(f"memory://amo-gc-{tmp_path.name}/registry", cache_dir=tmp_path / "cache")
    for i, name in enumerate(["a", "b", "c"]):
        store.promote(fake_bundle(tmp_path, name, 0.8 + i / 100), GATE)
    store.fs.pipe_file(store._key("bundles", "cut", "planner.json"), b"{}")
    cleanup = store.gc(keep=1)
    assert cleanup.removed == ["bundles/a", "bundles/b", "bundles/cut"] and cleanup.kept == ["c"]
    assert [row["bundle_id"] for row in store.list()] == ["c"] and store.verify("c")


# -- signed bundles (issue 14) ---------------------------------------------------------------------
def test_signed_bundles_pass_and_unsigned_or_other_key_bundles_are_refused_by_name(tmp_path: Path) -> None:
    """With a verify key, the registry promotes a bundle signed with its private key (the manifest
    names the signer; manifest.sig is not an extra file) and refuses, naming the bundle, one that
    is unsigned, signed with another key, or whose manifest changed after signing; rollback to an
    unsigned bundle is refused too. Without a verify key both kinds are promoted."""
    from amo.signing import check_signature, sign_bundle, signer_of

    ours, our_pub = ec_keys(tmp_path / "keys", "ours")
    theirs, _ = ec_keys(tmp_path / "keys", "theirs")
    signed = fake_bundle(tmp_path / "c", "signed", 0.8)
    manifest = sign_bundle(signed, ours)
    assert manifest["signing"] == signer_of(ours) and manifest["signing"]["key"].startswith("sha256:")
    assert verify_bundle(signed)["signing"] == manifest["signing"] and (signed / "manifest.sig").is_file()
    assert check_signature(signed, our_pub)["bundle_id"] == "signed"

    open_registry = Registry(tmp_path / "open")
    assert open_registry.promote(fake_bundle(tmp_path / "c", "plain", 0.8), GATE).accepted
    assert open_registry.promote(signed, GATE).accepted

    registry = Registry(tmp_path / "registry", verify_key=our_pub)
    unsigned = fake_bundle(tmp_path / "c", "unsigned", 0.9)
    other = fake_bundle(tmp_path / "c", "other", 0.9)
    sign_bundle(other, theirs)
    changed = fake_bundle(tmp_path / "c", "changed", 0.9)
    sign_bundle(changed, ours)
    resealed = json.loads((changed / MANIFEST).read_text())
    resealed["metrics"]["router"]["in_scope_accuracy"] = 0.99
    write_manifest(changed, {k: v for k, v in resealed.items() if k != "digest"})
    refusals = {"unsigned": "bundle unsigned at .* is unsigned",
                "other": "bundle other at .* is signed with key sha256:.*, not the verify key",
                "changed": "bundle changed at .*: manifest.sig does not verify against"}
    for bundle, words in zip((unsigned, other, changed), refusals.values()):
        with pytest.raises(BundleError, match=words):
            registry.promote(bundle, GATE)
    assert registry.current_id() is None
    assert registry.promote(signed, GATE).accepted and registry.verify("signed")["bundle_id"] == "signed"
    shutil.copytree(unsigned, registry.bundles / "unsigned")
    with pytest.raises(BundleError, match=r"bundle unsigned at .* is unsigned"):
        registry.rollback(to="unsigned")
    assert registry.current_id() == "signed"


def test_cli_and_runtime_verify_signatures_from_amo_verify_key(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """AMO_VERIFY_KEY makes `amo promote` and `amo bundles verify` refuse an unsigned bundle by
    name (exit 1) and pass a signed one, and the runtime refuse to load an unsigned bundle
    (recorded as refused, the signed one still served)."""
    from amo.runtime import Runtime
    from amo.settings import load_settings
    from amo.signing import sign_bundle

    private, public = ec_keys(tmp_path / "keys", "release")
    params = _cli_params(tmp_path, monkeypatch)
    monkeypatch.setenv("AMO_VERIFY_KEY", str(public))
    unsigned = fake_bundle(tmp_path / "candidates", "unsigned", 0.8)
    code, out = cli(params, "promote", str(unsigned))
    assert code == 1 and "bundle unsigned at" in out and "is unsigned" in out and str(public) in out
    signed = fake_bundle(tmp_path / "candidates", "signed", 0.8)
    sign_bundle(signed, private)
    code, out = cli(params, "promote", str(signed))
    assert code == 0 and "PROMOTED signed" in out
    code, out = cli(params, "bundles", "verify", "signed")
    assert code == 0 and "bundle signed: 2 files verified, signature verified" in out
    code, out = cli(params, "bundles", "verify", str(unsigned))
    assert code == 1 and "is unsigned" in out

    registry = load_settings().open_registry()
    assert registry.verify_key == public
    runtime = Runtime(registry, load=lambda path: type("Loaded", (), {"bundle_id": path.name})())
    assert runtime.refresh() and runtime.brain.bundle_id == "signed"
    shutil.copytree(unsigned, registry.bundles / "unsigned")
    (registry.root / "current.json").write_text(json.dumps({"bundle_id": "unsigned"}))
    assert not runtime.refresh() and runtime.brain.bundle_id == "signed"
    assert runtime.refused["bundle_id"] == "unsigned" and "is unsigned" in runtime.refused["error"]


def test_registry_commands_run_from_a_folder_without_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With only AMO_REGISTRY set, in a folder with no params.yaml, `amo bundles list`,
    `amo bundles gc` and `amo rollback` work on that registry (none needs the training params)."""
    from typer.testing import CliRunner

    from amo.cli import app

    registry = Registry(tmp_path / "registry")
    for i, name in enumerate(["a", "b", "c"]):
        registry.promote(fake_bundle(tmp_path / "candidates", name, 0.8 + i / 100), GATE)
    (tmp_path / "bare").mkdir()
    monkeypatch.chdir(tmp_path / "bare")
    monkeypatch.delenv("AMO_PARAMS", raising=False)
    monkeypatch.setenv("AMO_REGISTRY", str(tmp_path / "registry"))
    runner = CliRunner()
    listed = runner.invoke(app, ["bundles", "list"])
    assert listed.exit_code == 0 and [line[:3] for line in listed.output.splitlines()] == ["  a", "  b", "* c"]
    rolled = runner.invoke(app, ["rollback"])
    assert rolled.exit_code == 0 and "current bundle is now b" in rolled.output
    cleaned = runner.invoke(app, ["bundles", "gc", "--keep", "2"])
    assert cleaned.exit_code == 0 and "removed bundles/a" in cleaned.output, cleaned.output
    assert sorted(p.name for p in registry.bundles.iterdir()) == ["b", "c"]
    assert list((tmp_path / "bare").iterdir()) == []
