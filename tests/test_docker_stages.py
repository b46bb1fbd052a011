"""The Dockerfile's runtime image, proven without Docker: its wheel and runtime stages' own RUN
lines install amo[serve] into a fresh folder (tests/dockerfile_stages.py), and its CMD serves a
bundle built here: /route, /plan, /readyz and /metrics answer with no torch installed, /invoke
answers 501 naming the extra (an arm-calling /copilot too: tests/test_runtime_api.py), the
HEALTHCHECK passes, and the `amo` CLI routes and lists bundles. One pip install (about a minute)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port, wait_until
from dockerfile_stages import Result, run_stage
from tiny_bundle import build_tiny_bundle

from amo.config import GateParams
from amo.registry import Registry

pytestmark = pytest.mark.slow  # a fresh venv, one pip install and a real bundle


@pytest.fixture(scope="module")
def runtime_image(tmp_path_factory: pytest.TempPathFactory) -> Result:
    """The runtime stage, run under a fresh root (CI's wheel folder in place of the PyTorch index)."""
    find_links = {"PIP_FIND_LINKS": os.environ.get("PIP_FIND_LINKS", "/opt/wheels")}
    return run_stage("runtime", tmp_path_factory.mktemp("image"), build_args=find_links)


@pytest.fixture(scope="module")
def registry(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with a real tiny bundle promoted (built with this venv's training extras)."""
    work = tmp_path_factory.mktemp("bundle")
    bundle = build_tiny_bundle(work / "build", tiny_lm)
    Registry(work / "registry").promote(bundle, GateParams(floors={}, tolerance=1.0))
    return work / "registry"


@pytest.fixture(scope="module")
def served(runtime_image: Result, registry: Path) -> Iterator[dict[str, Any]]:
    """The image's CMD on 127.0.0.1 (the image binds 0.0.0.0) and a free port, on `registry`."""
    port = free_port()
    env = dict(runtime_image.env, AMO_REGISTRY=str(registry), AMO_PORT=str(port), OMP_NUM_THREADS="1")
    command = [("127.0.0.1" if word == "0.0.0.0" else word) for word in runtime_image.cmd]
    log = registry.parent / "runtime.log"  # a file, not an unread pipe that blocks the server once full
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=runtime_image.workdir, env=env, text=True,
                                   stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        assert wait_until(ready, 120), "the runtime image's CMD did not become ready"
        yield {"url": url, "env": env}
    finally:
        process.terminate()
        process.wait(30)


def test_runtime_image_has_no_torch(runtime_image: Result) -> None:
    """The runtime stage installs amo[serve] without torch, transformers or scikit-learn."""
    probe = "import importlib.util as u; print([m for m in ('torch', 'transformers', 'sklearn', 'prefect', " \
            "'dvc', 'onnxruntime', 'fastapi') if u.find_spec(m)])"
    found = subprocess.run(["python", "-c", probe], env=runtime_image.env, capture_output=True, text=True,
                           check=True).stdout.strip()
    assert found == "['onnxruntime', 'fastapi']"
    # base, under wheel and runtime; then the decision log folder given to the amo user
    useradd, chown = "useradd --create-home --uid 10001 amo", 'chown amo:amo "$AMO_DECISION_LOG"'
    assert runtime_image.skipped == [useradd, useradd, chown]


def test_runtime_image_serves_route_plan_and_refuses_generation_with_501(served: dict[str, Any]) -> None:
    """With amo[serve] only, /route and /plan answer 200 with real scores, /readyz and /metrics
    answer, /invoke answers 501 naming `pip install 'amo[arms]'`; the route is in the decision
    log the image names (AMO_DECISION_LOG, a folder the image creates)."""
    from amo.decisions import read_log

    url = served["url"]
    routed = httpx.post(f"{url}/route", json={"prompt": "where is my order 1234"})
    assert routed.status_code == 200, routed.text
    logged = [r["request_id"] for r in read_log(Path(served["env"]["AMO_DECISION_LOG"]), "decisions")]
    assert routed.json()["request_id"] in logged
    route = routed.json()["route"]
    assert isinstance(route["separator"], float) and route["separator"] != 0.0
    planned = httpx.post(f"{url}/plan", json={"prompt": "refund for a broken mug"})
    assert planned.status_code == 200 and isinstance(planned.json()["plan"]["path"], list), planned.text
    assert httpx.get(f"{url}/readyz").json()["status"] == "ready"
    assert "amo_http_requests_total" in httpx.get(f"{url}/metrics").text
    invoked = httpx.post(f"{url}/invoke", json={"input": "and in blue?", "arm": "rewrite"})
    assert invoked.status_code == 501, invoked.text
    assert invoked.json()["error"]["code"] == "extra_not_installed"
    assert "pip install 'amo[arms]'" in invoked.json()["error"]["message"]


def test_runtime_image_healthcheck_and_cli(runtime_image: Result, served: dict[str, Any], registry: Path) -> None:
    """The image's HEALTHCHECK command exits 0 against the served runtime; `amo route` and `amo
    bundles list` run in the image (no training dependencies)."""
    env = served["env"]
    assert runtime_image.healthcheck is not None
    subprocess.run(["bash", "-c", runtime_image.healthcheck], env=env, check=True, timeout=30)
    for args in (["route", "where is my order 1234", "--json"], ["bundles", "list"]):
        done = subprocess.run(["amo", *args], env=env, cwd=runtime_image.workdir, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("* ")
