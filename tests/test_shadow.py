"""The shadow check: `amo promote --shadow` points the registry's challenger at a bundle, the
runtime scores it on live prompts off the answer path and logs agreement, and the gate can
require shadow decisions and a challenger right at least as often as the champion."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from conftest import wait_until
from test_release import fake_bundle
from test_runtime_api import FakeBrain, Gate, fake_runtime, in_process_server

from amo.config import GateParams
from amo.decisions import DecisionLog, read_log
from amo.registry import Registry
from amo.shadow import shadow_checks, shadow_summary


class Challenger(FakeBrain):
    """A challenger that selects price_lookup for prompts about price, else what the champion does;
    with `hold`, each route waits until it is set."""

    def __init__(self, bundle_id: str = "challenger-1", hold: threading.Event | None = None) -> None:
        super().__init__(Gate(), bundle_id)
        self.hold = hold

    def route_many(self, prompts: list[str]) -> list[Any]:
        from amo.routing import Route

        if self.hold is not None:
            assert self.hold.wait(60)
        return [Route(agents=[("price_lookup" if "price" in p else "order_status", 2.0)], separator=0.5)
                for p in prompts]


def test_the_challenger_is_scored_off_the_answer_path_and_agreement_logged(tmp_path: Path) -> None:
    """With a challenger served, each logged route is routed by it in the background and a shadow
    record says whether it agreed; a challenger that hangs delays no answer."""
    _gate, runtime = fake_runtime(tmp_path)
    hold = threading.Event()
    runtime.challenger = Challenger(hold=hold)
    with in_process_server(runtime, decision_log=str(tmp_path / "log")) as url:
        started = time.monotonic()
        ids = [httpx.post(f"{url}/route", json={"prompt": p}).json()["request_id"]
               for p in ("where is order 1", "price of the kettle", "where is order 2")]
        assert time.monotonic() - started < 5  # answered while the challenger was held
        assert list(read_log(tmp_path / "log", "shadow")) == []
        hold.set()
        assert wait_until(lambda: len(list(read_log(tmp_path / "log", "shadow"))) == 3, 30)
        health = httpx.get(f"{url}/healthz").json()
    shadows = {r["request_id"]: r for r in read_log(tmp_path / "log", "shadow")}
    assert [shadows[i]["agree"] for i in ids] == [True, False, True]
    assert shadows[ids[1]]["route"]["agents"] == [{"id": "price_lookup", "score": 2.0}]
    assert {r["challenger"] for r in shadows.values()} == {"challenger-1"}
    assert {r["champion"] for r in shadows.values()} == {"fake-1"}
    assert health["challenger"] == "challenger-1"


def test_a_full_shadow_queue_skips_prompts_and_never_blocks(tmp_path: Path) -> None:
    """Past the queue's limit prompts are not shadowed (counted), and the answers still come."""
    from amo.shadow import ShadowScorer

    hold = threading.Event()
    log = DecisionLog(tmp_path)
    scorer = ShadowScorer(log, lambda: Challenger(hold=hold), limit=2)
    scorer.start()
    started = time.monotonic()
    for i in range(10):
        scorer.offer(f"r{i}", "where is order 1", "fake-1", ["order_status"])
    assert time.monotonic() - started < 1 and scorer.skipped >= 7
    hold.set()
    scorer.stop()
    log.stop()


def test_registry_challenger_pointer_is_served_and_cleared_by_promotion(tmp_path: Path) -> None:
    """`Registry.shadow` copies a verified bundle in and points challenger.json at it; the runtime
    loads it beside the champion; promoting it clears the pointer, and gc keeps it meanwhile."""
    from amo.runtime import Runtime

    registry = Registry(tmp_path / "registry")
    gate = GateParams(floors={}, tolerance=1.0)
    registry.promote(fake_bundle(tmp_path / "b", "champion-1", 0.9), gate)
    assert registry.shadow(fake_bundle(tmp_path / "b", "challenger-1", 0.9)) == "challenger-1"
    assert registry.challenger_id() == "challenger-1" and registry.current_id() == "champion-1"
    assert "challenger-1" in registry.gc(keep=1, dry_run=True).kept
    runtime = Runtime(registry, load=lambda path: FakeBrain(Gate(), json.loads((path / "manifest.json").read_text())
                                                            ["bundle_id"]))
    runtime.refresh()
    runtime.refresh_challenger()
    assert runtime.brain.bundle_id == "champion-1" and runtime.challenger.bundle_id == "challenger-1"
    registry.promote(registry.bundle_path("challenger-1"), gate)
    assert registry.challenger_id() is None and registry.current_id() == "challenger-1"
    runtime.refresh_challenger()
    assert runtime.challenger is None
    assert [e["action"] for e in registry.history()] == ["promote", "shadow", "promote"]


def _logged(folder: Path, rows: list[tuple[str, str, str, dict[str, Any] | None]]) -> None:
    """Decisions (champion route), shadow records (challenger route) and feedback in `folder`."""
    log = DecisionLog(folder, log_prompts=True)
    for request_id, champion, challenger, feedback in rows:
        route = {"agents": [{"id": champion, "score": 2.0}], "separator": 0.5, "abstained": False}
        log.decide(request_id, "route", "champion-1", "p " + request_id, route, None, 1.0)
        log.shadow_log.append({"v": 1, "request_id": request_id, "time": "2026-12-07T00:00:00.000Z",
                               "champion": "champion-1", "challenger": "challenger-1",
                               "route": {"agents": [{"id": challenger, "score": 2.0}], "separator": 0.5,
                                         "abstained": False}, "agree": champion == challenger})
        if feedback is not None:
            log.feedback(request_id, feedback["outcome"], feedback.get("agents"), None, "champion-1")
    log.stop()


def test_gate_requires_shadow_decisions_and_quality_not_below_the_champion(tmp_path: Path) -> None:
    """The summary counts shadow decisions, agreement and who was right where feedback says; the
    gate fails too few decisions and a challenger right less often than the champion."""
    wrong_price = {"outcome": "wrong", "agents": ["price_lookup"]}
    _logged(tmp_path / "better", [("a", "order_status", "order_status", {"outcome": "ok"}),
                                  ("b", "order_status", "price_lookup", wrong_price),
                                  ("c", "order_status", "order_status", None)])
    summary = shadow_summary(tmp_path / "better", "challenger-1")
    assert summary == {"challenger": "challenger-1", "decisions": 3, "agreement": 0.6667, "with_feedback": 2,
                       "champion_right": 0.5, "challenger_right": 1.0}
    assert all(ok for ok, _ in shadow_checks(summary, 3))
    (too_few, _) = shadow_checks(summary, 4)
    assert not too_few[0] and "3 decisions scored in shadow < gate.shadow_min_decisions 4" in too_few[1]
    _logged(tmp_path / "worse", [("a", "order_status", "price_lookup", {"outcome": "ok"})])
    checks = shadow_checks(shadow_summary(tmp_path / "worse", "challenger-1"), 1)
    assert [ok for ok, _ in checks] == [True, False] and "right on 0.0000 of 1" in checks[1][1]
    assert shadow_checks(None, 0) == [] and not shadow_checks(None, 5)[0][0]


def test_promotion_gate_reports_the_shadow_check(tmp_path: Path, monkeypatch: Any) -> None:
    """A gate with shadow_min_decisions rejects a candidate never run in shadow (current stays),
    and its reasons say so; extra checks reach the registry's gate."""
    registry = Registry(tmp_path / "registry")
    params = GateParams(floors={}, tolerance=1.0, shadow_min_decisions=5)
    registry.promote(fake_bundle(tmp_path / "b", "champion-1", 0.9), params)
    decision = registry.promote(fake_bundle(tmp_path / "b", "cand-1", 0.9), params,
                                extra_checks=lambda bundle_id: shadow_checks(
                                    shadow_summary(tmp_path / "log", bundle_id), params.shadow_min_decisions))
    assert not decision.accepted and registry.current_id() == "champion-1"
    assert any("0 decisions scored in shadow < gate.shadow_min_decisions 5" in r for r in decision.reasons)


def test_cli_promote_shadow_then_the_gate_reads_the_log(tmp_path: Path, monkeypatch: Any) -> None:
    """`amo promote --shadow B` makes B the challenger (current untouched); with
    gate.shadow_min_decisions, `amo promote B` is rejected (exit 3) until the decision log holds
    that many of B's shadow decisions, then promoted, and the challenger pointer is cleared."""
    import yaml
    from test_release import _cli_params, cli

    params = _cli_params(tmp_path, monkeypatch)
    raw = yaml.safe_load(params.read_text())
    raw["gate"]["shadow_min_decisions"] = 2
    raw["serve"] = {"decision_log": "logs/decisions"}
    params.write_text(yaml.safe_dump(raw))
    # the first bundle has no champion to be scored beside: no shadow check
    assert cli(params, "promote", str(fake_bundle(tmp_path / "b", "champion-1", 0.9)))[0] == 0
    code, out = cli(params, "promote", "--shadow", str(fake_bundle(tmp_path / "b", "challenger-1", 0.9)))
    assert code == 0 and "challenger challenger-1" in out
    registry = Registry(tmp_path / "registry")
    assert registry.challenger_id() == "challenger-1" and registry.current_id() == "champion-1"
    _logged(tmp_path / "logs" / "decisions", [("a", "order_status", "order_status", None)])
    code, out = cli(params, "promote", str(tmp_path / "b" / "challenger-1"))
    assert code == 3 and "FAILED: shadow: 1 decisions scored in shadow < gate.shadow_min_decisions 2" in out
    _logged(tmp_path / "logs" / "decisions", [("b", "order_status", "price_lookup", {"outcome": "ok"})])
    code, out = cli(params, "promote", str(tmp_path / "b" / "challenger-1"))
    assert code == 3 and "FAILED: shadow: right on 0.0000 of 1 decisions with feedback vs the champion's 1.0000" in out
    _logged(tmp_path / "logs" / "decisions", [("c", "order_status", "price_lookup",
                                               {"outcome": "wrong", "agents": ["price_lookup"]})] * 1)
    code, out = cli(params, "promote", str(tmp_path / "b" / "challenger-1"))
    assert code == 0 and "ok: shadow: 3 decisions scored in shadow >= gate.shadow_min_decisions 2" in out
    assert registry.current_id() == "challenger-1" and registry.challenger_id() is None


def test_no_decision_log_no_challenger_loaded(tmp_path: Path) -> None:
    """A runtime that logs nothing has nowhere to log agreement: it loads no challenger."""
    registry = Registry(tmp_path / "registry")
    registry.promote(fake_bundle(tmp_path / "b", "champion-1", 0.9), GateParams(floors={}, tolerance=1.0))
    registry.shadow(fake_bundle(tmp_path / "b", "challenger-1", 0.9))
    _, runtime = fake_runtime(tmp_path)
    with in_process_server(runtime, decision_log=None):
        runtime.refresh_challenger()
        assert runtime.shadowing is False and runtime.challenger is None
