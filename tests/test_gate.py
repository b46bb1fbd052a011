"""The promotion gate's regression check: a drop beyond the tolerance fails, unless the same
test rows show it is a few flipped rows (paired sign test), which the reason then says."""

from __future__ import annotations

from pathlib import Path

from amo.config import GateParams
from amo.registry import gate, sign_test

PARAMS = GateParams(floors={"router.oos_recall": 0.5}, tolerance=0.02, alpha=0.05)


def _bundle(rows: list[float]) -> dict:
    return {"router": {"oos_recall": sum(rows) / len(rows)}, "rows": {"router": {"oos_recall": rows}}}


def test_sign_test_counts_worse_and_better_rows() -> None:
    """Two rows worse and none better is p = 0.25; identical rows are p = 1."""
    assert sign_test([0, 0, 1, 1], [1, 1, 1, 1]) == (2, 0, 0.25)
    assert sign_test([1, 0], [1, 0]) == (0, 0, 1.0)
    assert sign_test([0.5, 1.0, 0.0], [1.0, 0.5, 0.0]) == (1, 1, 0.75)


def test_two_flipped_prompts_of_thirteen_pass_and_say_why() -> None:
    """OOS recall 10/13 -> 8/13 on the same rows (2 worse, 0 better) is not a significant regression."""
    champion = _bundle([1.0] * 10 + [0.0] * 3)
    candidate = _bundle([0.0, 0.0] + [1.0] * 8 + [0.0] * 3)
    checks = gate(candidate, champion, PARAMS)
    assert all(ok for ok, _ in checks), checks
    assert "2 worse, 0 better: paired sign test p = 0.250 >= alpha 0.05" in checks[-1][1]


def test_a_real_regression_fails_and_stored_metrics_without_rows_stay_strict() -> None:
    """Eight rows of forty worse and none better fails (p < 0.004); without per-row results a drop
    beyond the tolerance fails as before; alpha 1 makes every such drop fail."""
    champion = _bundle([1.0] * 40)
    candidate = _bundle([0.0] * 8 + [1.0] * 32)
    ok, reason = gate(candidate, champion, PARAMS)[-1]
    assert not ok and "a significant regression" in reason
    few = _bundle([0.0, 0.0] + [1.0] * 38)
    assert gate(few, champion, PARAMS)[-1][0]
    assert not gate(few, champion, GateParams(floors=PARAMS.floors, tolerance=0.02, alpha=1.0))[-1][0]
    stored = {"router": {"oos_recall": 0.6}}
    ok, reason = gate(stored, {"router": {"oos_recall": 0.7}}, PARAMS)[-1]
    assert not ok and reason.endswith("(beyond tolerance 0.02)")


def test_the_same_files_on_the_same_test_data_are_scored_once(tmp_path, monkeypatch) -> None:
    """The cheap path measures its bundle and the gate then scores it again: the second time is
    taken from the first (same files, same test bytes), with the arms read from the manifest as
    it is now; changed test data is scored afresh."""
    from amo import assessment
    from amo.bundle import write_manifest

    bundle, data = tmp_path / "bundle", tmp_path / "data"
    bundle.mkdir()
    for split in ("routing", "traces"):
        (data / split).mkdir(parents=True)
        (data / split / "test.jsonl").write_text('{"prompt": "x"}\n')

    def manifest(arms: dict) -> None:
        write_manifest(bundle, {"bundle_id": "20260101T000000Z-0123456789", "files": {"router/a": "00"},
                                "metrics": {"arms": arms}, "models": {}})

    calls: list[Path] = []
    monkeypatch.setattr(assessment, "_score", lambda b, d: calls.append(b) or {"router": {"oos_recall": 0.5}})
    (bundle / "runtime.json").write_text('{"arms": ["t"]}')
    manifest({})
    first = assessment.assess_bundle(bundle, data)
    manifest({"t": {"arm": {"f1": 1.0}}})  # what `measure` rewrites
    second = assessment.assess_bundle(bundle, data)
    assert len(calls) == 1 and second["router"] == first["router"] and second["arms"] == {"t": {"arm": {"f1": 1.0}}}
    (data / "routing" / "test.jsonl").write_text('{"prompt": "y"}\n')
    assessment.assess_bundle(bundle, data)
    assert len(calls) == 2


def test_an_arm_the_bundle_serves_without_scores_fails_the_gate_by_name(tmp_path, monkeypatch) -> None:
    """A bundle whose runtime serves arm `u` but whose metrics hold no score for it (e.g. an
    index-only bundle whose arm files differ from its parent's) cannot pass: the arm is judged or
    the bundle is refused."""
    from amo import assessment
    from amo.bundle import write_manifest

    bundle, data = tmp_path / "bundle", tmp_path / "data"
    bundle.mkdir()
    for split in ("routing", "traces"):
        (data / split).mkdir(parents=True)
        (data / split / "test.jsonl").write_text('{"prompt": "x"}\n')
    (bundle / "runtime.json").write_text('{"arms": ["t", "u"]}')
    scored = {"arm": {"f1": 0.9}, "base": {"f1": 0.2}, "metric": "f1"}
    write_manifest(bundle, {"bundle_id": "20260101T000000Z-0123456789", "files": {"router/a": "01"},
                            "metrics": {"arms": {"t": scored}}, "models": {}})
    monkeypatch.setattr(assessment, "_score", lambda b, d: {"router": {"oos_recall": 0.9}})
    measured = assessment.assess_bundle(bundle, data)
    assert measured["arms"] == {"t": scored, "u": {}}
    checks = dict((why, ok) for ok, why in gate(measured, None, PARAMS))
    assert checks["arms.t = 0.9000 vs base model 0.2000 (gains 0.0)"] is True
    assert checks["arms.u: no arm and base scores of its task metric in the candidate's metrics"] is False
