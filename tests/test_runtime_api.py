"""The runtime's HTTP contract over real HTTP, on a served fake bundle (fast: no bundle is built):
the generation queue (429 + Retry-After), timeout (504) and max_new_tokens cap (422), arms off,
a runtime without the arms extra (501),
the /route batch window, the generation thread's torch threads, and every error status the
OpenAPI spec documents produced in the error envelope."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port, wait_until

from amo.registry import Registry


class Gate:
    """Generation jobs that block until released, counting the ones that ran."""

    def __init__(self) -> None:
        self.release, self.started, self.ran = threading.Event(), threading.Event(), 0

    def block(self) -> None:
        self.ran += 1
        self.started.set()
        assert self.release.wait(60)


class FakeBrain:
    """A served bundle whose routes are instant and whose generation waits on `gate`."""

    def __init__(self, gate: Gate, bundle_id: str = "fake-1") -> None:
        self.gate, self.bundle_id = gate, bundle_id
        self.runtime = {"arms": ["rewrite"]}
        self.agent_ids = ["order_status", "returns_refunds", "product_search", "price_lookup"]
        self.manifest = {"bundle_id": bundle_id, "metrics": {}, "models": {}, "files": {}, "digest": "0" * 64}

    def route_many(self, prompts: list[str]) -> list[Any]:
        from amo.routing import Route

        return [Route(agents=[("order_status", 2.0)], separator=0.5) for _ in prompts]

    def plan(self, prompt: str) -> Any:
        from amo.planner import Plan

        return self.route_many([prompt])[0], Plan(["order_status"], [["rule"]])

    def invoke(self, rows: list[tuple[str | None, str]], max_new_tokens: int | None = None) -> list[str]:
        self.gate.block()
        return [f"out {max_new_tokens}" for _ in rows]

    def copilot_steps(self, prompt: str) -> Any:
        route, plan = self.plan(prompt)
        return route, plan, [("order_status", "rewrite")]


def fake_runtime(tmp_path: Path, arms: str = "lazy") -> tuple[Gate, Any]:
    """A Runtime serving a FakeBrain (no poller), and the gate its generation waits on."""
    from amo.runtime import Runtime

    gate = Gate()
    runtime = Runtime(Registry(tmp_path / "registry"), arms=arms)
    runtime.brain = FakeBrain(gate)
    return gate, runtime


class Exploding:
    """A served 'bundle' every use of which raises: each endpoint then answers 500."""

    @property
    def bundle_id(self) -> str:
        raise RuntimeError("secret detail")

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"secret detail: {name}")


@contextlib.contextmanager
def in_process_server(runtime: Any, **settings: Any) -> Iterator[str]:
    """create_app(runtime) with these settings under uvicorn on a free 127.0.0.1 port, in a
    thread of this process (so a test can swap what the runtime serves); its base URL."""
    import uvicorn

    from amo.runtime import create_app
    from amo.settings import RuntimeSettings

    settings.setdefault("generation_process", False)  # the fake brain's generation blocks on this process's gate
    settings.setdefault("decision_log", None)  # the default folder is relative to the working folder: the repository
    app = create_app(runtime, RuntimeSettings.model_construct(**settings), manage_runtime=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, 30)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


@contextlib.contextmanager
def _patched(mapping: dict[str, Any], key: str, value: Any) -> Iterator[None]:
    saved = mapping[key]
    mapping[key] = value
    try:
        yield
    finally:
        mapping[key] = saved


def _post_later(url: str, body: dict[str, Any], into: list[httpx.Response]) -> threading.Thread:
    thread = threading.Thread(target=lambda: into.append(httpx.post(url, json=body, timeout=60)))
    thread.start()
    return thread


def test_generation_queue_full_is_a_429_and_routing_goes_on(tmp_path: Path) -> None:
    """While generation is busy, /route, /plan and /healthz still answer at once; past
    serve.generation_queue admitted requests (the running one included) /invoke and /copilot get
    429 generation_busy with a Retry-After; once the generation ends every admitted request is
    answered and new ones are admitted again."""
    gate, runtime = fake_runtime(tmp_path)
    with in_process_server(runtime, generation_queue=2, request_timeout_seconds=60) as url:
        answered: list[httpx.Response] = []
        threads = [_post_later(f"{url}/invoke", {"input": "a", "arm": "rewrite", "max_new_tokens": 5}, answered),
                   _post_later(f"{url}/copilot", {"prompt": "b"}, answered)]
        assert gate.started.wait(30)
        assert wait_until(lambda: httpx.get(f"{url}/healthz").json()["generation_admitted"] == 2, 30)
        for endpoint, body in (("invoke", {"input": "c"}), ("copilot", {"prompt": "d"})):
            busy = httpx.post(f"{url}/{endpoint}", json=body)
            assert busy.status_code == 429, busy.text
            assert busy.json()["error"]["code"] == "generation_busy"
            assert "AMO_GENERATION_QUEUE = 2" in busy.json()["error"]["message"]
            assert int(busy.headers["retry-after"]) >= 1
        started = time.perf_counter()
        assert httpx.post(f"{url}/route", json={"prompt": "where is my order"}).status_code == 200
        assert httpx.post(f"{url}/plan", json={"prompt": "where is my order"}).status_code == 200
        assert time.perf_counter() - started < 5
        gate.release.set()
        for thread in threads:
            thread.join(60)
        assert sorted(r.status_code for r in answered) == [200, 200]
        assert {r.json().get("output") for r in answered} == {"out 5", None}
        assert httpx.post(f"{url}/invoke", json={"input": "e"}).json()["output"] == "out None"
        assert httpx.get(f"{url}/healthz").json()["generation_admitted"] == 0


def test_generation_timeout_is_a_504_and_a_waiting_job_never_runs(tmp_path: Path) -> None:
    """A request whose generation has not answered within serve.request_timeout_seconds gets 504
    timeout in the error envelope; one that timed out while still queued is never run; a running
    one keeps its slot until it ends."""
    gate, runtime = fake_runtime(tmp_path)
    with in_process_server(runtime, generation_queue=3, request_timeout_seconds=1.0) as url:
        answered: list[httpx.Response] = []
        threads = [_post_later(f"{url}/invoke", {"input": "a"}, answered) for _ in range(2)]
        for thread in threads:
            thread.join(30)
        assert [r.status_code for r in answered] == [504, 504]
        assert all(r.json()["error"]["code"] == "timeout" and "AMO_REQUEST_TIMEOUT_SECONDS" in
                   r.json()["error"]["message"] for r in answered)
        assert httpx.get(f"{url}/healthz").json()["generation_admitted"] == 1  # the running one
        gate.release.set()
        assert wait_until(lambda: httpx.get(f"{url}/healthz").json()["generation_admitted"] == 0, 30)
        assert gate.ran == 1


def test_max_new_tokens_over_the_cap_is_a_422(tmp_path: Path) -> None:
    """Asking /invoke for more than serve.max_new_tokens is refused with 422 (not clamped), naming
    the setting; at the cap it runs with the asked number."""
    gate, runtime = fake_runtime(tmp_path)
    gate.release.set()
    with in_process_server(runtime, max_new_tokens=64) as url:
        over = httpx.post(f"{url}/invoke", json={"input": "a", "max_new_tokens": 65})
        assert over.status_code == 422 and over.json()["error"] == {
            "code": "max_new_tokens_too_large",
            "message": "max_new_tokens 65 is over this runtime's limit 64 (serve.max_new_tokens / AMO_MAX_NEW_TOKENS)"}
        assert httpx.post(f"{url}/invoke", json={"input": "a", "max_new_tokens": 64}).json()["output"] == "out 64"
        assert gate.ran == 1


def test_arms_off_answers_503_and_routing_goes_on(tmp_path: Path) -> None:
    """With serve.arms off, /invoke and /copilot answer 503 arms_off naming the setting, and no
    generation runs; routing still works and /healthz says so."""
    gate, runtime = fake_runtime(tmp_path, arms="off")
    with in_process_server(runtime) as url:
        for endpoint, body in (("invoke", {"input": "a"}), ("copilot", {"prompt": "b"})):
            response = httpx.post(f"{url}/{endpoint}", json=body)
            assert response.status_code == 503 and response.json()["error"]["code"] == "arms_off"
            assert "AMO_ARMS = off" in response.json()["error"]["message"]
        assert httpx.post(f"{url}/route", json={"prompt": "x"}).status_code == 200
        assert httpx.get(f"{url}/healthz").json()["arms"] == "off"
    assert gate.ran == 0


def test_route_batch_window_gathers_requests_that_arrive_within_it() -> None:
    """With a batch window, /route requests arriving within it after the first share one batch;
    without one, a lone request is routed at once."""
    import asyncio

    from amo.runtime import RouteBatcher

    batches: list[int] = []
    brain = FakeBrain(Gate())

    async def staggered(batcher: RouteBatcher) -> None:
        async def later(delay: float) -> Any:
            await asyncio.sleep(delay)
            return await batcher.route(brain, "p")

        await asyncio.gather(*(later(delay) for delay in (0.0, 0.05, 0.1)))

    for window, expected in ((0.5, [3]), (0.0, [1, 1, 1])):
        batches.clear()
        batcher = RouteBatcher(8, batches.append, window=window)
        batcher.start()
        try:
            asyncio.run(staggered(batcher))
        finally:
            batcher.stop()
        assert batches == expected


@pytest.mark.slow  # a subprocess, a spawned process or a trained model: not in make test-fast
def test_every_documented_error_status_is_produced_in_the_envelope(tmp_path: Path) -> None:
    """For every endpoint and every error status its OpenAPI spec documents, a real request
    produces that status, and its body validates against the spec's schema for it: the error
    envelope (no FastAPI default `{"detail"}` schema is left in the spec)."""
    import jsonschema

    from amo.extras import EXTRAS

    gate, runtime = fake_runtime(tmp_path)
    with in_process_server(runtime, generation_queue=1, request_timeout_seconds=1.0,
                           max_body_bytes=1024, decision_log=str(tmp_path / "decisions")) as url:
        spec = httpx.get(f"{url}/openapi.json").json()
        assert "HTTPValidationError" not in spec["components"]["schemas"]
        documented = [(path, method, int(status), response)
                      for path, operations in spec["paths"].items() for method, operation in operations.items()
                      for status, response in operation["responses"].items() if int(status) >= 400]
        checked: list[tuple[str, str, int]] = []

        def send(path: str, method: str, **kwargs: Any) -> httpx.Response:
            return httpx.request(method.upper(), f"{url}{path}", timeout=30, **kwargs)

        def body_for(path: str) -> dict[str, Any]:
            if path == "/feedback":
                return {"request_id": "never-logged", "outcome": "ok"}
            return {"input": "x", "arm": "rewrite"} if path == "/invoke" else {"prompt": "x"}

        def produce(path: str, method: str, status: int) -> httpx.Response:
            if status == 400:
                return send(path, method, content=b'{"prompt": ', headers={"content-type": "application/json"})
            if status == 404:
                return send(path, method, json=body_for(path))
            if status == 413:
                return send(path, method, json={"prompt": "x" * 2000})
            if status == 422:
                return send(path, method, json={})
            if status in (429, 504):
                # one request runs past the timeout (504) and keeps the only slot: the next gets 429
                first: list[httpx.Response] = []
                _post_later(f"{url}{path}", body_for(path), first).join(30)
                assert gate.started.wait(10) and first[0].status_code == 504
                response = first[0] if status == 504 else send(path, method, json=body_for(path))
                gate.release.set()
                assert wait_until(lambda: runtime_generation_idle(url), 30)
                gate.release.clear()
                gate.started.clear()
                return response
            if status == 501:  # as if amo[arms] were not installed
                with _patched(EXTRAS, "arms", ("amo_no_such_module",)):
                    return send(path, method, json=body_for(path))
            if status == 503:
                runtime.brain = None
                return send(path, method, json=body_for(path)) if method == "post" else send(path, method)
            if status == 500:
                runtime.brain = Exploding()
                return send(path, method, json=body_for(path)) if method == "post" else send(path, method)
            raise AssertionError(f"no way to produce {status} for {method.upper()} {path}")

        for path, method, status, response_spec in documented:
            runtime.brain = FakeBrain(gate)
            response = produce(path, method, status)
            assert response.status_code == status, (path, method, status, response.text)
            if method != "head":
                schema = response_spec["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (path, method, status)
                jsonschema.validate(response.json(), {**schema, "components": spec["components"]})
                assert set(response.json()["error"]) >= {"code", "message"}
            checked.append((path, method, status))
    assert len(checked) == len(documented) == 41, checked
    assert {s for _, _, s in checked} == {400, 404, 413, 422, 429, 500, 501, 503, 504}


def test_generation_without_the_arms_extra_is_a_501_naming_it(tmp_path: Path) -> None:
    """Where amo[arms] (torch) is not installed, /invoke and a /copilot whose plan calls an arm
    answer 501 extra_not_installed with the pip command; /route and /plan still answer."""
    from amo.extras import EXTRAS

    gate, runtime = fake_runtime(tmp_path)
    gate.release.set()
    with in_process_server(runtime) as url, _patched(EXTRAS, "arms", ("amo_no_such_module",)):
        for endpoint, body in (("invoke", {"input": "a"}), ("copilot", {"prompt": "b"})):
            response = httpx.post(f"{url}/{endpoint}", json=body)
            assert response.status_code == 501, response.text
            error = response.json()["error"]
            assert error["code"] == "extra_not_installed" and "pip install 'amo[arms]'" in error["message"]
        assert httpx.post(f"{url}/route", json={"prompt": "c"}).status_code == 200
        assert httpx.post(f"{url}/plan", json={"prompt": "c"}).status_code == 200
    assert gate.ran == 0


def runtime_generation_idle(url: str) -> bool:
    return httpx.get(f"{url}/healthz").json()["generation_admitted"] == 0


@pytest.mark.slow  # a subprocess, a spawned process or a trained model: not in make test-fast
def test_generation_leaves_routing_a_core_in_its_own_process() -> None:
    """Generation runs torch on serve.generation_threads threads, by default on every core but one
    (at least one): in its own process by default (serve.generation_process), else on a thread."""
    import asyncio

    import torch

    from amo.runtime import GenerationPool

    def seen(job: Any, threads: int, process: bool) -> Any:
        pool = GenerationPool(limit=1, timeout=120, threads=threads, process=process)
        pool.start()
        try:
            return asyncio.run(pool.run(job))
        finally:
            pool.stop()

    before = torch.get_num_threads()
    try:
        for process in (True, False):
            assert seen(torch.get_num_threads, 3, process) == 3
            assert seen(torch.get_num_threads, 0, process) == max(1, (os.cpu_count() or 1) - 1)
        assert seen(os.getpid, 1, True) != os.getpid()
        assert seen(os.getpid, 1, False) == os.getpid()
        # serve.generation_nice lowers the generation process's priority, never the server's.
        server = os.nice(0)
        for process, expected in ((True, min(server + 7, 19)), (False, server)):
            niced = GenerationPool(limit=1, timeout=120, threads=1, process=process, nice=7)
            niced.start()
            try:
                assert asyncio.run(niced.run(functools.partial(os.nice, 0))) == expected
            finally:
                niced.stop()
        assert os.nice(0) == server
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow  # a subprocess, a spawned process or a trained model: not in make test-fast
def test_a_dead_generation_process_is_a_503_and_is_replaced() -> None:
    """A generation process that dies mid-job (killed, out of memory) answers that request 503
    generation_failed; the next job runs in a new process."""
    import asyncio
    import functools

    from amo.runtime import ApiError, GenerationPool

    pool = GenerationPool(limit=2, timeout=120, threads=1, process=True)
    pool.start()
    try:
        first = asyncio.run(pool.run(os.getpid))
        try:
            asyncio.run(pool.run(functools.partial(os._exit, 1)))
            raise AssertionError("the job that ended its process returned")
        except ApiError as exc:
            assert (exc.status, exc.code) == (503, "generation_failed")
        second = asyncio.run(pool.run(os.getpid))
        assert first != second and second != os.getpid()
        assert pool.admitted == 0
    finally:
        pool.stop()
