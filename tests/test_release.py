"""Bundles and the registry: verification refuses tampering, the gate protects the champion,
`current` switches only to whole bundles, rollback restores the previous one."""

import json
import shutil
from pathlib import Path

import pytest

from amo.bundle import MANIFEST, BundleError, file_hashes, verify_bundle
from amo.config import GateParams
from amo.registry import Registry


def fake_bundle(root: Path, bundle_id: str, accuracy: float) -> Path:
    """A minimal bundle: a few files and a manifest whose hashes match them."""
    bundle = root / bundle_id
    (bundle / "router").mkdir(parents=True)
    (bundle / "router" / "router.onnx").write_bytes(b"onnx-bytes-" + bundle_id.encode())
    (bundle / "planner.json").write_text('{"tree": []}')
    manifest = {"bundle_id": bundle_id, "created": "2026-01-01T00:00:00Z", "models": {},
                "metrics": {"router": {"in_scope_accuracy": accuracy}}, "files": file_hashes(bundle)}
    (bundle / MANIFEST).write_text(json.dumps(manifest))
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
