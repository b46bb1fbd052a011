"""`amo serve` over real HTTP on 127.0.0.1: endpoints, JSON errors and limits, lazy arms, a
promotion swapped in under load, and tampered bundles refused while the old one keeps serving."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import free_port, wait_until
from tiny_bundle import build_tiny_bundle, ec_keys, tamper, tiny_params, variant

from amo.config import GateParams
from amo.registry import CURRENT, Registry, atomic_write

pytestmark = pytest.mark.slow  # the bundle is built by the real stages (router, ONNX, LoRA arm, planner)
GATE = GateParams(floors={}, tolerance=1.0)


@pytest.fixture(scope="module")
def bundle(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("build"), tiny_lm)


def unlogged() -> Any:
    """The built-in settings without the decision log (the default folder is relative to the
    working folder, which is the repository in these in-process tests)."""
    from amo.settings import RuntimeSettings

    return RuntimeSettings.model_construct(decision_log=None)


def start_server(workdir: Path, tiny_lm: Path, registry: Path) -> tuple[subprocess.Popen[str], str]:
    """`amo serve` in a subprocess on a free loopback port, once /healthz answers."""
    raw = tiny_params(tiny_lm)
    raw["registry"] = {"path": f"file://{registry}"}  # an fsspec URL, as a team would configure
    raw["serve"] = {"poll_seconds": 0.2, "max_body_bytes": 65536, "decision_log": "logs/decisions"}
    params = workdir / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # Its output goes to a file, never to an unread pipe: once a pipe's 64 KiB fill with access-log
    # lines, the server's next log write blocks, and with it every request (CI: /healthz timed out).
    log = workdir / "serve.log"
    with open(log, "w") as output:
        process = subprocess.Popen([str(Path(sys.executable).parent / "amo"), "--params", str(params), "serve",
                                    "--port", str(port)], cwd=workdir, env=env, text=True,
                                   stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"amo serve exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    raise AssertionError("amo serve did not answer /healthz in time")


@pytest.fixture(scope="module")
def served(bundle: Path, tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A registry with `bundle` promoted, and `amo serve` on it."""
    workdir = tmp_path_factory.mktemp("serve")
    registry = Registry(workdir / "registry")
    first = registry.promote(bundle, GATE).bundle_id
    process, url = start_server(workdir, tiny_lm, workdir / "registry")
    assert httpx.get(f"{url}/healthz").json()["bundle_id"] == first  # what was current at start
    yield {"url": url, "registry": registry, "first": first, "workdir": workdir, "bundle": bundle}
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


def wait_for(url: str, predicate: Any, seconds: float = 60) -> dict[str, Any]:
    """Poll /healthz until `predicate` holds or `seconds` pass. A poll that times out (30 s each)
    is retried until then: a slow answer on two shared cores is not the behaviour under test. (The
    CI timeouts that led here were the server blocked on an unread output pipe: start_server.)"""
    deadline = time.monotonic() + seconds
    while True:
        try:
            health = httpx.get(f"{url}/healthz", timeout=30).json()
        except httpx.TimeoutException:
            if time.monotonic() > deadline:
                raise
            continue
        if predicate(health) or time.monotonic() > deadline:
            return health
        time.sleep(0.1)


@pytest.fixture()
def fresh(served: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    """A variant of the bundle promoted for this test alone and served, its arms not loaded yet:
    no test sees what an earlier one promoted or loaded on the shared server."""
    name = request.node.name
    path = variant(served["bundle"], served["workdir"] / "variants" / name, name)
    bundle_id = served["registry"].promote(path, GATE).bundle_id
    health = wait_for(served["url"], lambda h: h["bundle_id"] == bundle_id)
    assert health["bundle_id"] == bundle_id and health["refused"] is None, health
    return {"bundle_id": bundle_id, "path": path}


def test_route_plan_bundle_and_openapi(served: dict[str, Any], fresh: dict[str, Any]) -> None:
    """The served bundle answers /route and /plan, /bundle is its manifest, /docs and the
    OpenAPI schema list every endpoint; arms are not loaded by routing."""
    url = served["url"]
    route = httpx.post(f"{url}/route", json={"prompt": "where is my order 1234"})
    assert route.status_code == 200
    body = route.json()
    assert body["bundle_id"] == fresh["bundle_id"] and set(body["route"]) == {"agents", "separator", "abstained"}
    plan = httpx.post(f"{url}/plan", json={"prompt": "refund for a broken mug"}).json()
    assert set(plan["plan"]) == {"path", "abstained", "rules", "choice"}
    assert set(plan["plan"]["path"]) <= {"order_status", "returns_refunds", "product_search", "price_lookup"}
    manifest = httpx.get(f"{url}/bundle").json()
    assert manifest == json.loads((fresh["path"] / "manifest.json").read_text())
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    assert {"/route", "/plan", "/invoke", "/copilot", "/healthz", "/readyz", "/bundle", "/metrics"} <= set(paths)
    assert httpx.get(f"{url}/docs").status_code == 200
    health = httpx.get(f"{url}/healthz").json()
    assert health["status"] == "ok" and health["refused"] is None and health["arms_loaded"] is False


BAD_REQUESTS = [  # (what, request kwargs, status, error code, words in the message)
    ("empty prompt", {"json": {"prompt": "   "}}, 422, "empty_prompt", "prompt is empty"),
    ("invalid JSON", {"content": b'{"prompt": "x"', "headers": {"content-type": "application/json"}},
     400, "invalid_json", "not valid JSON"),
    ("1 MB prompt", {"json": {"prompt": "x" * 1_000_000}}, 413, "body_too_large", "larger than 65536 bytes"),
    ("1 MB chunked body", {"content": iter([b'{"prompt": "', b"x" * 1_000_000, b'"}'])}, 413,
     "body_too_large", "larger than 65536 bytes"),
    ("prompt over max_prompt_chars", {"json": {"prompt": "y" * 5000}}, 422, "prompt_too_long",
     "5000 characters; the limit is 4000"),
    ("missing prompt", {"json": {"text": "hi"}}, 422, "invalid_request", "prompt: Field required"),
    ("prompt of the wrong type", {"json": {"prompt": 7}}, 422, "invalid_request",
     "prompt: Input should be a valid string"),
    ("lone surrogate", {"content": b'{"prompt": "\\ud800 order"}', "headers": {"content-type": "application/json"}},
     422, "invalid_request", "prompt: Value error, a lone surrogate"),
]


@pytest.mark.parametrize(("what", "request_kwargs", "status", "code", "words"), BAD_REQUESTS,
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_http_input_gets_a_clear_4xx(served: dict[str, Any], what: str, request_kwargs: dict[str, Any],
                                         status: int, code: str, words: str) -> None:
    """Bad input gets a 4xx JSON error {"error": {"code", "message"}}; the server stays healthy."""
    response = httpx.post(f"{served['url']}/route", **request_kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"], error
    assert httpx.get(f"{served['url']}/healthz").json()["status"] == "ok"
    assert httpx.post(f"{served['url']}/route", json={"prompt": "find red running shoes"}).status_code == 200


def test_lone_surrogate_in_any_text_field_is_a_4xx(served: dict[str, Any]) -> None:
    """A lone surrogate (a JSON escape that is no character) in any text field of any endpoint is a
    422 naming the field, in the error envelope; never a 500."""
    for endpoint, body in (("route", b'{"prompt": "\\udc80"}'), ("plan", b'{"prompt": "a\\ud800"}'),
                           ("copilot", b'{"prompt": "\\ud800 order"}'),
                           ("invoke", b'{"input": "\\ud800", "arm": "rewrite"}'),
                           ("invoke", b'{"input": "hi", "arm": "\\ud800"}')):
        response = httpx.post(f"{served['url']}/{endpoint}", content=body,
                              headers={"content-type": "application/json"})
        assert response.status_code == 422, (endpoint, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_request" and "lone surrogate" in error["message"], error


def test_head_healthz_and_offline_docs(served: dict[str, Any]) -> None:
    """HEAD /healthz is 200; /docs and /redoc load their scripts and styles from the server itself
    (no CDN: they work offline), and each asset answers 200."""
    import re

    url = served["url"]
    assert httpx.head(f"{url}/healthz").status_code == 200
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{url}{page}")
        assert html.status_code == 200
        assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        assert assets and all(asset.startswith("/") for asset in assets), assets
        for asset in assets:
            response = httpx.get(f"{url}{asset}")
            assert response.status_code == 200 and len(response.content) > 1000, asset


def test_internal_error_hides_the_exception_and_logs_it_with_a_request_id(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected failure is a 500 that says "internal error" with a request id (also in the
    X-Request-ID header), never the exception's text; the traceback is logged with that id."""
    from fastapi.testclient import TestClient

    from amo.runtime import Runtime, create_app

    class Failing:
        bundle_id = "b"

        def route_many(self, prompts: list[str]) -> list[Any]:
            raise RuntimeError("secret detail: /srv/keys")

    runtime = Runtime(Registry(tmp_path / "registry"))
    runtime.brain = Failing()
    with TestClient(create_app(runtime, unlogged(), manage_runtime=False), raise_server_exceptions=False) as client:
        response = client.post("/route", json={"prompt": "where is my order"})
    assert response.status_code == 500
    assert "secret" not in response.text and "RuntimeError" not in response.text
    request_id = response.headers["x-request-id"]
    assert response.json()["error"] == {"code": "internal", "request_id": request_id,
                                        "message": f"internal error (request id {request_id})"}
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None and "secret detail" in str(logged[0].exc_info[1])


def test_unknown_arm_and_unknown_path(served: dict[str, Any], fresh: dict[str, Any]) -> None:
    """An unknown arm is a 422 naming the bundle's arms (without loading the base model); an
    unknown path is a JSON 404."""
    response = httpx.post(f"{served['url']}/invoke", json={"input": "hi", "arm": "ghost"})
    assert response.status_code == 422
    assert response.json()["error"] == {"code": "unknown_arm",
                                        "message": "unknown arm 'ghost'; this bundle's arms: rewrite"}
    missing = httpx.get(f"{served['url']}/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "http_404"
    assert httpx.get(f"{served['url']}/healthz").json()["arms_loaded"] is False


def test_invoke_and_copilot_load_arms_once(served: dict[str, Any], fresh: dict[str, Any]) -> None:
    """The first /invoke loads the arms; /invoke and /copilot answer with the served bundle."""
    url = served["url"]
    invoked = httpx.post(f"{url}/invoke", json={"input": "and the price?", "arm": "rewrite",
                                                "max_new_tokens": 3}, timeout=120)
    assert invoked.status_code == 200, invoked.text
    assert isinstance(invoked.json()["output"], str) and invoked.json()["arm"] == "rewrite"
    assert httpx.get(f"{url}/healthz").json()["arms_loaded"] is True
    answer = httpx.post(f"{url}/copilot", json={"prompt": "refund for a broken mug"}, timeout=120).json()
    assert answer["bundle_id"] == fresh["bundle_id"]
    assert {"route", "plan", "arm_outputs"} <= set(answer)
    assert all(step["arm"] == "rewrite" for step in answer["arm_outputs"])


def test_promotion_is_swapped_in_under_load(served: dict[str, Any], fresh: dict[str, Any]) -> None:
    """/route and /plan requests running while a new bundle is promoted all succeed; later ones
    see the new bundle."""
    url, registry = served["url"], served["registry"]
    second = variant(served["bundle"], served["workdir"] / "second", "second")
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def client(endpoint: str) -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                response = http.post(f"{url}/{endpoint}", json={"prompt": "track parcel 99812"})
                results.append((response.status_code, response.json().get("bundle_id", "")))

    threads = [threading.Thread(target=client, args=(endpoint,))
               for endpoint in ("route", "route", "route", "plan")]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    new_id = registry.promote(second, GATE).bundle_id
    health = wait_for(url, lambda h: h["bundle_id"] == new_id)
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join()
    assert health["bundle_id"] == new_id
    assert results and all(status == 200 for status, _ in results)
    served_ids = [bundle_id for _, bundle_id in results]
    assert served_ids[0] == fresh["bundle_id"] and served_ids[-1] == new_id
    assert set(served_ids) == {fresh["bundle_id"], new_id}


@pytest.mark.parametrize("kind", ["byte", "missing", "extra"])
def test_tampered_bundle_in_the_registry_is_refused(served: dict[str, Any], kind: str) -> None:
    """A bundle written straight into the registry with a changed byte, a missing file or an
    extra file is refused by the runtime (shown by /healthz); the old bundle keeps serving."""
    url, registry = served["url"], served["registry"]
    before = httpx.get(f"{url}/healthz").json()["bundle_id"]
    bad = variant(served["bundle"], registry.bundles / f"tampered-{kind}", f"tampered-{kind}")
    bad_id = json.loads((bad / "manifest.json").read_text())["bundle_id"]
    bad.rename(registry.bundles / bad_id)
    bad = registry.bundles / bad_id
    tamper(bad, kind, "router/extra.onnx" if kind == "extra" else "router/router.onnx")
    atomic_write(registry.root / CURRENT, json.dumps({"bundle_id": bad_id, "since": kind}) + "\n")
    health = wait_for(url, lambda h: (h["refused"] or {}).get("bundle_id") == bad_id)
    assert health["refused"]["bundle_id"] == bad_id and "failed verification" in health["refused"]["error"]
    assert health["bundle_id"] == before and health["status"] == "ok"
    response = httpx.post(f"{url}/route", json={"prompt": "where is my order 1234"})
    assert response.status_code == 200 and response.json()["bundle_id"] == before
    # Point `current` back at the served bundle (the runtime clears `refused`), then drop the bad one.
    atomic_write(registry.root / CURRENT, json.dumps({"bundle_id": before, "since": "restored"}) + "\n")
    assert wait_for(url, lambda h: h["refused"] is None)["refused"] is None
    shutil.rmtree(bad)


def test_copilot_merges_calls_to_a_shared_arm(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two planned agents answered by the same arm cost one arm call; both steps get its output,
    and the agent without an arm is still called, handed to the agent itself (arm None)."""
    from amo.brain import Brain
    from amo.planner import Plan
    from amo.routing import Route

    brain = Brain(bundle)
    calls: list[list[tuple[str | None, str]]] = []
    routed = Route(agents=[("order_status", 2.0), ("returns_refunds", 1.5)], separator=0.0)
    monkeypatch.setattr(brain, "plan", lambda prompt: (routed, Plan(["order_status", "returns_refunds",
                                                                     "price_lookup"], [])))
    monkeypatch.setattr(brain, "invoke", lambda rows, max_new_tokens=None: calls.append(rows) or
                        [f"out-{arm}" for arm, _ in rows])
    answer = brain.copilot("return my order")
    assert calls == [[("rewrite", "return my order")]]
    assert answer.arm_outputs == [{"agent": "order_status", "arm": "rewrite", "output": "out-rewrite"},
                                  {"agent": "returns_refunds", "arm": "rewrite", "output": "out-rewrite"}]
    assert answer.calls == [*answer.arm_outputs, {"agent": "price_lookup", "arm": None, "output": None}]


def test_copilot_calls_no_arm_when_the_router_abstains(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An out-of-scope route gets no plan and no arm call; the answer says it is out of scope."""
    from amo.brain import Brain
    from amo.routing import Route

    brain = Brain(bundle)
    monkeypatch.setattr(brain, "_route", lambda scores: Route(agents=[], separator=float(scores[-1])))
    monkeypatch.setattr(brain, "invoke", lambda rows, max_new_tokens=None: pytest.fail("an arm was called"))
    answer = brain.copilot("what is the capital of France")
    assert answer.out_of_scope and answer.plan.path == [] and answer.arm_outputs == []
    assert answer.to_dict()["out_of_scope"] is True and answer.to_dict()["calls"] == []


def test_runtime_swaps_one_reference_and_keeps_refused_out(tmp_path: Path, bundle: Path) -> None:
    """refresh() swaps the served Brain only after a full load; a request holding the old Brain
    keeps it; a bundle that fails to load, or an unreadable pointer, is recorded as refused and
    not retried until the pointer changes; pointing back at the served bundle clears it."""
    from amo.runtime import Runtime

    registry = Registry(tmp_path / "registry")
    first = registry.promote(bundle, GATE).bundle_id
    loads: list[Path] = []

    class Loaded:
        def __init__(self, path: Path) -> None:
            loads.append(path)
            self.bundle_id = json.loads((path / "manifest.json").read_text())["bundle_id"]
            if "broken" in self.bundle_id:
                raise ValueError("cannot load")

    runtime = Runtime(registry, load=Loaded)
    assert runtime.refresh() and runtime.brain.bundle_id == first
    in_flight = runtime.brain
    assert not runtime.refresh() and len(loads) == 1
    second = registry.promote(variant(bundle, tmp_path / "second", "second"), GATE).bundle_id
    assert runtime.refresh() and runtime.brain.bundle_id == second and in_flight.bundle_id == first
    broken = registry.promote(variant(bundle, tmp_path / "broken", "broken"), GATE).bundle_id
    assert not runtime.refresh()
    assert runtime.brain.bundle_id == second and runtime.refused["bundle_id"] == broken
    assert not runtime.refresh() and len(loads) == 3
    assert runtime.health()["refused"]["error"] == "cannot load"
    atomic_write(registry.root / CURRENT, "{not json")
    assert not runtime.refresh() and runtime.brain.bundle_id == second
    assert runtime.refused["error"].startswith("unreadable current pointer")
    atomic_write(registry.root / CURRENT, json.dumps({"bundle_id": second}) + "\n")
    assert not runtime.refresh() and runtime.refused is None and len(loads) == 3


BUNDLE_FILES = ["manifest.json", "runtime.json", "router/router.onnx", "router/agents.json",
                "router/agent_index.safetensors", "planner/planner.json", "arms/rewrite/arm.json",
                "arms/rewrite/adapter_config.json", "arms/rewrite/adapter_model.safetensors"]
TAMPERS = ([("byte", name) for name in BUNDLE_FILES] + [("missing", name) for name in BUNDLE_FILES[1:]]
           + [("extra", "notes.txt"), ("extra", "router/extra.onnx")])


@pytest.mark.parametrize(("kind", "name"), TAMPERS, ids=[f"{k}-{n}" for k, n in TAMPERS])
def test_tampered_real_bundle_is_refused_everywhere(bundle: Path, tmp_path: Path, kind: str, name: str) -> None:
    """A changed byte in any file, any file missing or an extra file is refused by `verify`, by
    promotion (the champion stays) and by the runtime's loader."""
    from amo.bundle import BundleError, verify_bundle
    from amo.runtime import Runtime

    registry = Registry(tmp_path / "registry")
    champion = registry.promote(variant(bundle, tmp_path / "champion", "champion"), GATE).bundle_id
    bad = variant(bundle, tmp_path / "bad", "bad")
    tamper(bad, kind, name)
    with pytest.raises(BundleError):
        verify_bundle(bad)
    with pytest.raises(BundleError):
        registry.promote(bad, GATE)
    assert registry.current_id() == champion
    runtime = Runtime(registry)
    assert runtime.refresh() and runtime.brain.bundle_id == champion
    bad_id = f"{champion[: -len('-champion')]}-bad"
    shutil.copytree(bad, registry.bundles / bad_id)
    atomic_write(registry.root / CURRENT, json.dumps({"bundle_id": bad_id}) + "\n")
    assert not runtime.refresh()
    assert runtime.brain.bundle_id == champion and runtime.refused["bundle_id"] == bad_id


def test_route_many_matches_route_one_by_one(bundle: Path) -> None:
    """Routing prompts in one batch gives the same agents and scores (to 1e-4) as one at a time."""
    from amo.brain import Brain

    brain = Brain(bundle)
    prompts = ["where is my order 1234", "a much longer prompt about returning a broken lamp I bought",
               "price?", "tell me a joke"]
    for one, batched in zip([brain.route(p) for p in prompts], brain.route_many(prompts)):
        assert [a for a, _ in one.agents] == [a for a, _ in batched.agents]
        assert abs(one.separator - batched.separator) < 1e-4
    # Planning in one batch (as the gate's assessment does) gives the plans the runtime serves.
    for (route, plan), prompt in zip(brain.plan_many(prompts), prompts):
        one_route, one_plan = brain.plan(prompt)
        assert [a for a, _ in route.agents] == [a for a, _ in one_route.agents] and plan.path == one_plan.path


def test_no_bundle_yet_is_a_503_until_one_is_promoted(tmp_path: Path, bundle: Path) -> None:
    """With nothing promoted, /healthz says no_bundle and /route is a JSON 503; after a promotion
    the poller loads the bundle and /route answers."""
    from fastapi.testclient import TestClient

    from amo.runtime import Runtime, create_app

    registry = Registry(tmp_path / "registry")
    runtime = Runtime(registry, poll_seconds=0.1)
    with TestClient(create_app(runtime, unlogged())) as client:
        assert client.get("/healthz").json()["status"] == "no_bundle"
        response = client.post("/route", json={"prompt": "where is my order"})
        assert response.status_code == 503 and response.json()["error"]["code"] == "no_bundle"
        bundle_id = registry.promote(bundle, GATE).bundle_id
        deadline = time.monotonic() + 60
        while client.get("/healthz").json()["bundle_id"] != bundle_id and time.monotonic() < deadline:
            time.sleep(0.1)
        response = client.post("/route", json={"prompt": "where is my order"})
        assert response.status_code == 200 and response.json()["bundle_id"] == bundle_id


def test_arm_changed_after_the_bundle_was_verified_is_refused_by_name(tmp_path: Path, bundle: Path) -> None:
    """An adapter replaced after the bundle was verified (arms load on first use) is re-hashed
    when the arms load: /invoke answers 503 naming the arm and the file, and no arm is served."""
    from fastapi.testclient import TestClient
    from safetensors.torch import load_file, save_file

    from amo.runtime import Runtime, create_app

    registry = Registry(tmp_path / "registry")
    registry.promote(variant(bundle, tmp_path / "arms", "arms"), GATE)
    runtime = Runtime(registry, poll_seconds=60)
    with TestClient(create_app(runtime, unlogged())) as client:
        assert client.get("/healthz").json()["bundle_id"] == runtime.brain.bundle_id
        adapter = runtime.brain.path / "arms" / "rewrite" / "adapter_model.safetensors"
        other = {name: tensor + 1.0 for name, tensor in load_file(adapter).items()}
        save_file(other, tmp_path / "other_adapter.safetensors")
        shutil.copy(tmp_path / "other_adapter.safetensors", adapter)  # another valid adapter
        for endpoint, body in (("/invoke", {"input": "and the price?", "arm": "rewrite"}),
                               ("/copilot", {"prompt": "refund for a broken mug"})):
            response = client.post(endpoint, json=body)
            if endpoint == "/copilot" and response.status_code == 200:  # the route may call no arm
                assert response.json()["arm_outputs"] == []
                continue
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "arm_refused"
            assert "arm 'rewrite'" in error["message"]
            assert "checksum mismatch in arms/rewrite/adapter_model.safetensors" in error["message"]
        assert client.get("/healthz").json()["arms_loaded"] is False


def test_readyz_is_503_until_a_verified_bundle_is_loaded(tmp_path: Path, bundle: Path) -> None:
    """/healthz is 200 whenever the process is up; /readyz is a JSON 503 while no verified bundle
    is loaded (nothing promoted, or only a refused one) and 200 once one is, GET and HEAD alike."""
    from fastapi.testclient import TestClient

    from amo.runtime import Runtime, create_app

    registry = Registry(tmp_path / "registry")
    bad = variant(bundle, registry.bundles / "bad", "bad")
    bad_id = json.loads((bad / "manifest.json").read_text())["bundle_id"]
    bad = bad.rename(registry.bundles / bad_id)
    tamper(bad, "byte", "router/router.onnx")
    runtime = Runtime(registry, poll_seconds=0.1)
    with TestClient(create_app(runtime, unlogged())) as client:
        for state in ("nothing promoted", "refused"):
            assert client.get("/healthz").status_code == 200 and client.head("/healthz").status_code == 200
            response = client.get("/readyz")
            assert response.status_code == 503, state
            assert response.json()["error"]["code"] == "not_ready" and client.head("/readyz").status_code == 503
            if state == "nothing promoted":
                atomic_write(registry.root / CURRENT, json.dumps({"bundle_id": bad_id}) + "\n")
                assert wait_until(lambda: runtime.refused is not None)
        assert bad_id in client.get("/readyz").json()["error"]["message"]
        (registry.root / CURRENT).unlink()  # the gate would refuse to compare with a corrupt champion
        bundle_id = registry.promote(bundle, GATE).bundle_id
        assert wait_until(lambda: client.get("/readyz").status_code == 200)
        assert client.get("/readyz").json() == {"status": "ready", "bundle_id": bundle_id}
        assert client.head("/readyz").status_code == 200


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics and parse the Prometheus text: {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_metrics_count_requests_routes_batches_and_bundles(bundle: Path, tiny_lm: Path,
                                                           tmp_path: Path) -> None:
    """/metrics (Prometheus text, scraped over HTTP) counts requests and their latency by endpoint
    and status, route abstains, selected agents per route, /route batch sizes, and names the
    served bundle, the bundles swapped in and the bundles refused."""
    registry = Registry(tmp_path / "registry")
    registry.promote(bundle, GATE)
    process, url = start_server(tmp_path, tiny_lm, tmp_path / "registry")
    try:
        prompts = ["where is my order 1234", "tell me a joke", "price of the dyson fan"]
        routes = [httpx.post(f"{url}/route", json={"prompt": p}).json()["route"] for p in prompts]
        assert httpx.post(f"{url}/route", json={"prompt": " "}).status_code == 422
        assert httpx.post(f"{url}/route", json={"prompt": "x" * 100_000}).status_code == 413
        assert httpx.get(f"{url}/no/such/path/1").status_code == 404
        assert httpx.request("BREW", f"{url}/route").status_code == 405
        second = registry.promote(variant(bundle, tmp_path / "second", "second"), GATE).bundle_id
        assert wait_for(url, lambda h: h["bundle_id"] == second)["bundle_id"] == second
        bad = variant(bundle, registry.bundles / "bad", "bad")
        bad_id = json.loads((bad / "manifest.json").read_text())["bundle_id"]
        tamper(bad.rename(registry.bundles / bad_id), "byte", "router/router.onnx")
        atomic_write(registry.root / CURRENT, json.dumps({"bundle_id": bad_id}) + "\n")
        assert wait_for(url, lambda h: (h["refused"] or {}).get("bundle_id") == bad_id)["refused"]
        metrics = scrape(url)
    finally:
        process.terminate()
        process.wait(20)

    def value(name: str, **labels: str) -> float:
        return metrics[(name, frozenset(labels.items()))]

    ok, refused = {"endpoint": "/route", "method": "POST", "status": "200"}, {"endpoint": "/route",
                                                                              "method": "POST", "status": "422"}
    assert value("amo_http_requests_total", **ok) == 3 and value("amo_http_requests_total", **refused) == 1
    assert value("amo_http_request_duration_seconds_count", **ok) == 3
    assert 0 < value("amo_http_request_duration_seconds_sum", **ok) < 30
    assert value("amo_http_request_duration_seconds_bucket", le="+Inf", **ok) == 3
    assert value("amo_http_requests_total", endpoint="/healthz", method="GET", status="200") >= 2
    assert value("amo_http_requests_total", endpoint="/route", method="POST", status="413") == 1
    assert value("amo_http_requests_total", endpoint="unmatched", method="GET", status="404") == 1
    assert value("amo_http_requests_total", endpoint="/route", method="other", status="405") == 1
    assert value("amo_route_abstains_total") == sum(route["abstained"] for route in routes)
    assert value("amo_route_selected_agents_count") == 3
    assert value("amo_route_selected_agents_sum") == sum(len(route["agents"]) for route in routes)
    assert value("amo_route_batch_size_count") == 3 and value("amo_route_batch_size_sum") == 3
    assert value("amo_bundle_info", bundle_id=second) == 1
    assert value("amo_bundle_swaps_total") == 2 and value("amo_bundles_refused_total") == 1


# -- issue 14: settings from the environment, a generation pool, an honest API ---------------------
def bare_env(**variables: str) -> dict[str, str]:
    """This environment without any AMO_ variable, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMO_")}
    return {**env, "OMP_NUM_THREADS": "1", **variables}


def test_uvicorn_factory_with_two_workers_from_a_bare_folder(bundle: Path, tmp_path: Path) -> None:
    """`uvicorn --factory amo.runtime:create_app --workers 2`, run from a folder holding nothing
    and configured by AMO_REGISTRY alone, serves /route from two worker processes; each response
    carries an X-Request-ID (the client's own when it sends one) and each request is logged once
    with method, path, status, milliseconds and that id. The only thing written into the folder
    is the decision log's default, logs/decisions, holding the answered route."""
    registry = Registry(tmp_path / "registry")
    first = registry.promote(bundle, GATE).bundle_id
    bare = tmp_path / "bare"
    bare.mkdir()
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "amo.runtime:create_app",
                                "--workers", "2", "--host", "127.0.0.1", "--port", str(port)], cwd=bare,
                               env=bare_env(AMO_REGISTRY=str(tmp_path / "registry")), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: _answers(url, process), 180), "uvicorn did not answer /readyz"
        response = httpx.post(f"{url}/route", json={"prompt": "where is my order 1234"},
                              headers={"X-Request-ID": "ops-check-1"})
        assert response.status_code == 200 and response.json()["bundle_id"] == first
        assert response.headers["x-request-id"] == "ops-check-1"
        generated = httpx.post(f"{url}/route", json={"prompt": " "})
        assert generated.status_code == 422 and len(generated.headers["x-request-id"]) == 16
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert output.count("Started server process") == 2, output
    assert os.listdir(bare) == ["logs"] and os.listdir(bare / "logs") == ["decisions"]
    segments = sorted((bare / "logs" / "decisions").iterdir())
    assert segments and all(p.name.startswith("decisions-") for p in segments), segments
    assert '"request_id":"ops-check-1"' in "".join(p.read_text() for p in segments)
    assert "method=POST path=/route status=200 ms=" in output and "request_id=ops-check-1" in output
    assert "status=422 ms=" in output and f"request_id={generated.headers['x-request-id']}" in output


def _answers(url: str, process: subprocess.Popen[str]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"the server exited:\n{process.stdout.read() if process.stdout else ''}")
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_route_plan_and_bundles_from_a_bare_folder(bundle: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`amo route`, `amo plan`, `amo bundles list` and `amo bundles verify` run from a folder with
    no params.yaml, on the registry AMO_REGISTRY names."""
    from typer.testing import CliRunner

    from amo.cli import app

    registry = Registry(tmp_path / "registry")
    first = registry.promote(bundle, GATE).bundle_id
    (tmp_path / "bare").mkdir()
    monkeypatch.chdir(tmp_path / "bare")
    monkeypatch.setenv("AMO_REGISTRY", f"file://{tmp_path / 'registry'}")
    runner = CliRunner()
    routed = runner.invoke(app, ["route", "where is my order 1234", "--json"])
    assert routed.exit_code == 0, routed.output
    assert set(json.loads(routed.output)) == {"agents", "separator", "abstained"}
    planned = runner.invoke(app, ["plan", "refund for a broken mug"])
    assert planned.exit_code == 0 and planned.output.startswith("plan: "), planned.output
    listed = runner.invoke(app, ["bundles", "list"])
    assert listed.exit_code == 0 and listed.output.startswith(f"* {first}  created"), listed.output
    verified = runner.invoke(app, ["bundles", "verify", first])
    assert verified.exit_code == 0 and f"bundle {first}: " in verified.output
    assert os.listdir(tmp_path / "bare") == []


def test_amo_bundle_signs_with_amo_signing_key_and_the_runtime_serves_it(
        bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`amo bundle` with AMO_SIGNING_KEY writes a signed bundle (the manifest names the signer;
    manifest.sig beside it is not an extra file); a registry and runtime with the matching verify
    key promote and serve it, and refuse the unsigned bundle built from the same stages."""
    from typer.testing import CliRunner

    from amo.bundle import BundleError
    from amo.cli import app
    from amo.runtime import Runtime

    private, public = ec_keys(tmp_path / "keys", "release")
    workdir = bundle.parent.parent
    monkeypatch.chdir(workdir)
    result = CliRunner().invoke(app, [
        "--params", "params.yaml", "bundle", "--router", "artifacts/router", "--onnx", "artifacts/router_onnx",
        "--planner", "artifacts/planner", "--arms", "artifacts/arms", "--evaluation", "metrics/evaluation.json",
        "--out", str(tmp_path / "signed")], env={"AMO_SIGNING_KEY": str(private)})
    assert result.exit_code == 0 and ", signed by sha256:" in result.output, result.output
    manifest = json.loads((tmp_path / "signed" / "manifest.json").read_text())
    assert manifest["signing"]["scheme"] == "model-signing/elliptic-key"
    assert json.loads((bundle / "manifest.json").read_text())["signing"] is None
    registry = Registry(tmp_path / "registry", verify_key=public)
    with pytest.raises(BundleError, match="is unsigned"):
        registry.promote(bundle, GATE)
    assert registry.promote(tmp_path / "signed", GATE).accepted
    runtime = Runtime(registry)
    assert runtime.refresh() and runtime.brain.manifest["signing"] == manifest["signing"]
    assert runtime.brain.route("where is my order 1234").separator is not None


def test_eager_arms_load_with_the_bundle(tmp_path: Path, bundle: Path) -> None:
    """With serve.arms eager, the base LM and arms are loaded before the bundle is served."""
    from amo.runtime import Runtime

    registry = Registry(tmp_path / "eager")
    registry.promote(bundle, GATE)
    eager = Runtime(registry, arms="eager")
    assert eager.refresh() and eager.health()["arms_loaded"] is True


def test_eager_arms_load_in_the_generation_process(tmp_path: Path, bundle: Path) -> None:
    """With serve.arms eager, the runtime that `amo serve` builds loads the arms in its generation
    process before serving the bundle, and /invoke answers from that process."""
    from fastapi.testclient import TestClient

    from amo.runtime import create_app
    from amo.settings import load_settings

    Registry(tmp_path / "registry").promote(bundle, GATE)
    settings = load_settings(registry=str(tmp_path / "registry"), arms="eager", poll_seconds=60,
                             decision_log=str(tmp_path / "decisions"))
    with TestClient(create_app(settings=settings)) as client:
        assert client.get("/healthz").json()["arms_loaded"] is True
        invoked = client.post("/invoke", json={"input": "and the price?", "arm": "rewrite", "max_new_tokens": 2})
        assert invoked.status_code == 200 and isinstance(invoked.json()["output"], str), invoked.text


def test_a_challenger_is_scored_in_shadow_by_the_served_runtime(served: dict[str, Any], fresh: dict[str, Any]) -> None:
    """`Registry.shadow` of a real bundle: `amo serve` loads it beside the champion at its next poll
    and logs a shadow record for each answered route (the real Brain, real HTTP)."""
    from amo.decisions import read_log

    challenger = variant(served["bundle"], served["workdir"] / "variants" / "shadowed", "shadowed")
    challenger_id = served["registry"].shadow(challenger)
    health = wait_for(served["url"], lambda h: h["challenger"] == challenger_id)
    assert health["challenger"] == challenger_id and health["bundle_id"] == fresh["bundle_id"]
    route = httpx.post(f"{served['url']}/route", json={"prompt": "where is my order 1234"}, timeout=30)
    request_id = route.json()["request_id"]
    log = served["workdir"] / "logs" / "decisions"
    assert wait_until(lambda: any(r["request_id"] == request_id for r in read_log(log, "shadow")), 30)
    (record,) = [r for r in read_log(log, "shadow") if r["request_id"] == request_id]
    assert record["challenger"] == challenger_id and record["champion"] == fresh["bundle_id"]
    assert record["agree"] is True  # the same router, so the same selection
