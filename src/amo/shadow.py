"""The shadow check: a challenger bundle scored on live prompts beside the champion.

    amo promote --shadow BUNDLE      # verify, copy into the registry, point `challenger.json` at it

The runtime loads the challenger the registry's `challenger.json` names (verified as any bundle)
and, after each logged /route, /plan or /copilot answer, hands the prompt to one background thread
through a bounded queue (full: the prompt is not shadowed, and counted): the answer never waits
for the challenger. The thread routes it with the challenger and logs a `shadow` record beside the
decision log: the request id, both bundle ids, the challenger's route and whether its selection
agrees with the champion's.

`amo promote` then reads the log for the candidate (`gate.shadow_min_decisions` > 0): the number
of its shadow decisions, how often they agreed, and, where feedback gives the right agents
(amo.harvest's rules), how often each of the two was right; the gate requires at least
`shadow_min_decisions` of them and the challenger's share right not below the champion's.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from pathlib import Path
from typing import Any

from amo.decisions import DECISIONS, FEEDBACK, SHADOW, DecisionLog, latest_by_request, read_log, utc_now

log = logging.getLogger("amo.shadow")


def selected(route: dict[str, Any]) -> list[str]:
    """A logged route's selection, best first (empty: it abstained)."""
    return [a["id"] for a in route.get("agents", [])]


class ShadowScorer:
    """One thread that routes logged prompts with the challenger and logs agreement."""

    def __init__(self, decisions: DecisionLog, challenger: Any, limit: int = 1024) -> None:
        self.decisions = decisions
        self.challenger = challenger  # () -> the challenger Brain being served, or None
        self.scored = self.skipped = 0
        self._queue: queue.Queue[tuple[str, str, str, list[str]] | None] = queue.Queue(maxsize=limit)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="amo-shadow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=5)
            self._thread.join(timeout=10)

    def offer(self, request_id: str, prompt: str, champion_id: str, champion: list[str]) -> None:
        """Queue a logged decision for the challenger; never blocks (a full queue skips it)."""
        try:
            self._queue.put_nowait((request_id, prompt, champion_id, champion))
        except queue.Full:
            self.skipped += 1

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            request_id, prompt, champion_id, champion = item
            brain = self.challenger()
            if brain is None or brain.bundle_id == champion_id:
                continue
            try:
                (route,) = brain.route_many([prompt])
                answer = route.to_dict()
                self.decisions.shadow_log.append({
                    "v": 1, "request_id": request_id, "time": utc_now(), "champion": champion_id,
                    "challenger": brain.bundle_id, "route": answer, "agree": selected(answer) == champion})
                self.scored += 1
            except Exception as exc:  # noqa: BLE001 -- the challenger never fails the runtime
                log.warning("shadow scoring of %s by %s failed: %s", request_id, brain.bundle_id, exc)


def shadow_summary(log_dir: Path, challenger_id: str) -> dict[str, Any]:
    """What the log says of `challenger_id` in shadow: decisions, agreement with the champion, and
    on the decisions whose feedback names the right agents, how often each was right."""
    from amo.harvest import corrected_labels

    shadows = {r["request_id"]: r for r in read_log(log_dir, SHADOW) if r.get("challenger") == challenger_id}
    decisions = latest_by_request(r for r in read_log(log_dir, DECISIONS) if r.get("request_id") in shadows)
    verdicts = latest_by_request(r for r in read_log(log_dir, FEEDBACK) if r.get("request_id") in shadows)
    judged = champion_right = challenger_right = 0
    for request_id, feedback in verdicts.items():
        decision = decisions.get(request_id)
        labels = corrected_labels(decision, feedback) if decision else None
        if labels is None:
            continue
        judged += 1
        right = set(labels)
        champion_right += set(selected(decision.get("route") or {})) == right if decision else 0
        challenger_right += set(selected(shadows[request_id]["route"])) == right
    return {"challenger": challenger_id, "decisions": len(shadows),
            "agreement": round(sum(r["agree"] for r in shadows.values()) / len(shadows), 4) if shadows else None,
            "with_feedback": judged,
            "champion_right": round(champion_right / judged, 4) if judged else None,
            "challenger_right": round(challenger_right / judged, 4) if judged else None}


def shadow_checks(summary: dict[str, Any] | None, min_decisions: int) -> list[tuple[bool, str]]:
    """The gate's shadow checks (none when `min_decisions` is 0): enough shadow decisions, and
    the challenger right at least as often as the champion where feedback says who was."""
    if min_decisions <= 0:
        return []
    if summary is None:
        return [(False, "shadow: no decision log to read (serve.decision_log) but gate.shadow_min_decisions "
                        f"is {min_decisions}: run it in shadow first (amo promote --shadow BUNDLE)")]
    n = summary["decisions"]
    checks = [(n >= min_decisions, f"shadow: {n} decisions scored in shadow "
                                   f"{'>=' if n >= min_decisions else '<'} gate.shadow_min_decisions "
                                   f"{min_decisions} (agreement with the champion {summary['agreement']})")]
    if summary["with_feedback"]:
        mine, theirs = summary["challenger_right"], summary["champion_right"]
        checks.append((mine >= theirs, f"shadow: right on {mine:.4f} of {summary['with_feedback']} decisions "
                                       f"with feedback vs the champion's {theirs:.4f}"))
    else:
        checks.append((True, "shadow: no feedback on its shadow decisions yet (quality not compared)"))
    return checks
