"""The decision log and POST /feedback over real HTTP, on a served fake bundle: what a decision
holds (the prompt only with log_prompts), restarts, rotation, torn lines, several writers, kill -9,
and feedback refused by name."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import answered_until_killed, free_port, wait_until
from test_runtime_api import fake_runtime, in_process_server

from amo.decisions import DecisionLog, read_log, segments

ROOT = Path(__file__).resolve().parents[1]


def serve_logged(tmp_path: Path, **settings: Any) -> Any:
    gate, runtime = fake_runtime(tmp_path)
    gate.release.set()  # generation answers at once
    settings.setdefault("decision_log", str(tmp_path / "log"))
    return in_process_server(runtime, **settings)


def test_each_answer_is_logged_with_its_request_id_and_no_prompt(tmp_path: Path) -> None:
    """/route, /plan and /copilot answers carry a request id (body and X-Request-ID) under which
    the log holds the bundle, route with scores and separator, plan, latency and the prompt's
    sha256, never the prompt itself."""
    with serve_logged(tmp_path) as url:
        answers = {endpoint: httpx.post(f"{url}/{endpoint}", json={"prompt": f"where is my order {endpoint}"},
                                        timeout=30) for endpoint in ("route", "plan", "copilot")}
    records = {r["request_id"]: r for r in read_log(tmp_path / "log", "decisions")}
    assert len(records) == 3
    for endpoint, answer in answers.items():
        assert answer.status_code == 200, answer.text
        request_id = answer.json()["request_id"]
        assert answer.headers["x-request-id"] == request_id
        record = records[request_id]
        assert record["endpoint"] == endpoint and record["bundle_id"] == "fake-1" and record["latency_ms"] >= 0
        assert record["route"] == {"agents": [{"id": "order_status", "score": 2.0}], "separator": 0.5,
                                   "abstained": False}
        assert record["plan"] == (None if endpoint == "route" else {"path": ["order_status"], "abstained": False})
        assert "prompt" not in record
        prompt = f"where is my order {endpoint}"
        assert record["prompt_sha256"] == hashlib.sha256(prompt.encode()).hexdigest()
        assert prompt not in json.dumps(record)
    (segment,) = segments(tmp_path / "log", "decisions")
    assert segment.stat().st_mode & 0o777 == 0o600


def test_prompts_are_logged_only_with_log_prompts_and_a_client_id_is_kept(tmp_path: Path) -> None:
    """With log_prompts the prompt is in the log; a client's plain X-Request-ID is the decision's id."""
    with serve_logged(tmp_path, log_prompts=True) as url:
        answer = httpx.post(f"{url}/route", json={"prompt": "track parcel 7"}, headers={"x-request-id": "client-1"})
        again = httpx.post(f"{url}/route", json={"prompt": "track parcel 8"}, headers={"x-request-id": "client-1"})
    assert answer.json()["request_id"] == "client-1"
    # a repeated client id gets a new one: feedback on the first decision never lands on the second
    assert again.json()["request_id"] not in ("client-1", "") and again.headers["x-request-id"] == again.json()[
        "request_id"]
    first, second = read_log(tmp_path / "log", "decisions")
    assert first["prompt"] == "track parcel 7" and first["request_id"] == "client-1"
    assert second["request_id"] == again.json()["request_id"]


def test_log_survives_a_restart_and_rotates(tmp_path: Path) -> None:
    """A second runtime on the same folder appends new segments, keeps the old ones and takes
    feedback on the first one's decisions; past decision_segment_bytes a new segment starts."""
    with serve_logged(tmp_path, decision_segment_bytes=1024) as url:
        first = [httpx.post(f"{url}/route", json={"prompt": f"order {i}"}).json()["request_id"] for i in range(8)]
    before = segments(tmp_path / "log", "decisions")
    assert len(before) >= 2
    with serve_logged(tmp_path, decision_segment_bytes=1024) as url:
        second = httpx.post(f"{url}/route", json={"prompt": "order again"}).json()["request_id"]
        verdict = httpx.post(f"{url}/feedback", json={"request_id": first[0], "outcome": "ok"})
        assert verdict.status_code == 200, verdict.text
    after = segments(tmp_path / "log", "decisions")
    assert set(before) < set(after)
    assert [r["request_id"] for r in read_log(tmp_path / "log", "decisions")] == [*first, second]
    (feedback,) = read_log(tmp_path / "log", "feedback")
    assert feedback["request_id"] == first[0] and feedback["outcome"] == "ok"


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A segment whose last line was cut by a crash reads as its whole lines, with a warning."""
    log = DecisionLog(tmp_path)
    for i in range(3):
        log.decide(f"r{i}", "route", "b", f"p{i}", {"agents": [], "separator": 0.0, "abstained": True}, None, 1.0)
    log.stop()
    (segment,) = segments(tmp_path, "decisions")
    with open(segment, "ab") as handle:
        handle.write(b'{"request_id": "r3", "ti')
    with caplog.at_level(logging.WARNING, logger="amo.decisions"):
        assert [r["request_id"] for r in read_log(tmp_path, "decisions")] == ["r0", "r1", "r2"]
    assert "torn last line" in caplog.text
    assert "r3" not in DecisionLog(tmp_path).known and "r2" in DecisionLog(tmp_path).known


def test_a_decision_another_worker_logged_is_known() -> None:
    """Two writers on one folder (uvicorn workers) write their own segments; each knows the other's ids."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        a, b = DecisionLog(Path(tmp)), DecisionLog(Path(tmp))
        route = {"agents": [], "separator": 0.0, "abstained": True}
        a.decide("from-a", "route", "b", "p", route, None, 1.0)
        b.decide("from-b", "route", "b", "p", route, None, 1.0)
        assert "from-b" in a.known and "from-a" in b.known and "nobody" not in a.known
        a.stop()
        b.stop()
        assert len(segments(Path(tmp), "decisions")) == 2


FEEDBACK_REFUSED = [  # (what, body, status, code, words in the message)
    ("unknown request id", {"request_id": "nope", "outcome": "ok"}, 404, "unknown_request_id", "'nope'"),
    ("unknown agent", {"outcome": "wrong", "agents": ["order_status", "gift_cards"]}, 422, "unknown_agent",
     "'gift_cards'"),
    ("unknown agent in the path", {"outcome": "ok", "path": ["teleport"]}, 422, "unknown_agent", "'teleport'"),
    ("bad outcome", {"outcome": "great"}, 422, "invalid_request", "outcome: Input should be 'ok', 'wrong' or"),
    ("agents not a list", {"outcome": "wrong", "agents": "order_status"}, 422, "invalid_request", "agents"),
    ("an unknown field", {"outcome": "ok", "verdict": "ok"}, 422, "invalid_request", "verdict"),
    ("a request id that is a path", {"request_id": "../../etc/passwd", "outcome": "ok"}, 422,
     "invalid_request", "request_id"),
    ("a 10,000-character request id", {"request_id": "a" * 10_000, "outcome": "ok"}, 422, "invalid_request",
     "request_id"),
    ("a number as request id", {"request_id": 12, "outcome": "ok"}, 422, "invalid_request", "request_id"),
    ("partial without agents", {"outcome": "partial"}, 422, "agents_required", "partial needs `agents`"),
    ("ok with agents", {"outcome": "ok", "agents": ["order_status"]}, 422, "agents_with_ok", "send no `agents`"),
]


def test_feedback_is_refused_by_name(tmp_path: Path) -> None:
    """Feedback on an unknown request id, naming unknown agents or badly typed is a 4xx in the
    error envelope naming what is wrong, and nothing is logged; good feedback is logged."""
    with serve_logged(tmp_path) as url:
        request_id = httpx.post(f"{url}/route", json={"prompt": "where is my order"}).json()["request_id"]
        for what, body, status, code, words in FEEDBACK_REFUSED:
            answer = httpx.post(f"{url}/feedback", json={"request_id": request_id, **body})
            assert answer.status_code == status, (what, answer.text)
            assert answer.json()["error"]["code"] == code and words in answer.json()["error"]["message"], what
        assert list(read_log(tmp_path / "log", "feedback")) == []
        good = httpx.post(f"{url}/feedback", json={"request_id": request_id, "outcome": "wrong",
                                                  "agents": ["returns_refunds", "order_status"],
                                                  "path": ["order_status", "returns_refunds"]})
        assert good.status_code == 200 and good.json()["request_id"] == request_id
    (record,) = read_log(tmp_path / "log", "feedback")
    assert record["agents"] == ["returns_refunds", "order_status"] and record["bundle_id"] == "fake-1"


def test_feedback_without_a_decision_log_is_a_503(tmp_path: Path) -> None:
    """A runtime that logs nothing answers /feedback with 503 decision_log_off; routes still carry ids."""
    with serve_logged(tmp_path, decision_log=None) as url:
        route = httpx.post(f"{url}/route", json={"prompt": "where is my order"}).json()
        answer = httpx.post(f"{url}/feedback", json={"request_id": route["request_id"], "outcome": "ok"})
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "decision_log_off"
    assert not (tmp_path / "log").exists()


def test_a_feedback_flood_is_logged_whole(tmp_path: Path) -> None:
    """2,000 feedback posts from 8 threads with unknown and known ids: every accepted one is one
    whole line, none of the refused ones is."""
    with serve_logged(tmp_path) as url:
        ids = [httpx.post(f"{url}/route", json={"prompt": f"order {i}"}).json()["request_id"] for i in range(10)]
        accepted: list[str] = []

        def flood(worker: int) -> None:
            with httpx.Client() as http:
                for i in range(250):
                    request_id = ids[i % 10] if i % 2 else f"unknown-{worker}-{i}"
                    if http.post(f"{url}/feedback", json={"request_id": request_id,
                                                          "outcome": "ok"}).status_code == 200:
                        accepted.append(request_id)

        threads = [threading.Thread(target=flood, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    logged = [r["request_id"] for r in read_log(tmp_path / "log", "feedback")]
    assert len(accepted) == 1000 and sorted(logged) == sorted(accepted)


SERVER = """
import sys, uvicorn
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_runtime_api import fake_runtime
from amo.runtime import create_app
from amo.settings import RuntimeSettings
_, runtime = fake_runtime(Path({tmp!r}))
app = create_app(runtime, RuntimeSettings.model_construct(decision_log={log!r}, generation_process=False,
                 decision_fsync_seconds=60.0), manage_runtime=False)
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning")
"""


@pytest.mark.slow  # a server process
def test_kill_9_loses_no_answered_decision(tmp_path: Path) -> None:
    """Every decision answered before `kill -9` of the runtime is in the log after it (without
    any fsync: the lines were handed to the kernel before the answers were sent)."""
    port = free_port()
    script = SERVER.format(tests=str(ROOT / "tests"), tmp=str(tmp_path), log=str(tmp_path / "log"), port=port)
    server = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, OMP_NUM_THREADS="1"))
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: _up(url), 60)
        answered = answered_until_killed(url, server.pid, lambda ids: wait_until(lambda: len(ids) > 200, 60))
    finally:
        server.kill()
        server.wait()
    logged = {r["request_id"] for r in read_log(tmp_path / "log", "decisions")}
    assert answered and set(answered) <= logged


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        time.sleep(0.2)
        return False


def test_the_decision_log_setting_reaches_uvicorn_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve.decision_log` and `log_prompts` reach uvicorn workers (AMO_ variables); unset, the log
    goes to logs/decisions; null in the params file or AMO_DECISION_LOG= (empty) turns it off, in
    the workers too."""
    from amo.settings import load_settings

    for name in [n for n in os.environ if n.startswith("AMO_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    default = DecisionLog.from_settings(load_settings())
    assert default is not None and default.folder == Path("logs/decisions") and default.log_prompts is False
    (tmp_path / "params.yaml").write_text("serve:\n  decision_log: /srv/log\n  log_prompts: true\n")
    environment = load_settings(tmp_path / "params.yaml").environment()
    (tmp_path / "params.yaml").write_text("serve:\n  decision_log: null\n")
    off = load_settings(tmp_path / "params.yaml").environment()
    (tmp_path / "params.yaml").unlink()
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    log = DecisionLog.from_settings(load_settings())
    assert log is not None and log.folder == Path("/srv/log") and log.log_prompts is True
    assert off["AMO_DECISION_LOG"] == ""
    monkeypatch.setenv("AMO_DECISION_LOG", "")
    assert DecisionLog.from_settings(load_settings()) is None


def test_an_unwritable_decision_log_stops_the_start_naming_the_setting(tmp_path: Path) -> None:
    """A decision log folder that cannot be created stops `uvicorn --factory` (its workers exit
    with uvicorn's startup-failure status, so it stops rather than restarting them) and `amo
    serve` (status 1) before they serve
    anything, with a message naming the folder, serve.decision_log and AMO_DECISION_LOG= to turn
    it off; nothing is answered with 503 decision_log_failed."""
    (tmp_path / "a-file").write_text("not a folder")
    unwritable = str(tmp_path / "a-file" / "decisions")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMO_")}
    env.update(AMO_REGISTRY=str(tmp_path / "registry"), AMO_DECISION_LOG=unwritable, OMP_NUM_THREADS="1")
    factory = subprocess.run([sys.executable, "-m", "uvicorn", "--factory", "amo.runtime:create_app", "--workers",
                              "2", "--port", str(free_port())], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
    served = subprocess.run([str(Path(sys.executable).parent / "amo"), "serve", "--port", str(free_port())],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    for done in (factory, served):
        output = done.stdout + done.stderr
        assert f"serve.decision_log: cannot write the decision log folder {unwritable}" in output, output
        assert "AMO_DECISION_LOG= (empty)" in output
    assert "failed to start, stopping the parent process" in factory.stderr and "died" not in factory.stderr
    assert served.returncode == 1 and "Traceback" not in served.stderr
