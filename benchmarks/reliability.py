"""Reliability figures of the release path (issue 7).

    python benchmarks/reliability.py [--clients 16] [--seconds 30] [--promotions 1]
                                     [--worker-seconds 15] [--generation-model tiny|smollm2]

1. Runs the reliability tests (bad-input corpus, kill -9 during promotion, tampered bundles, the
   registry and runtime holes, every documented error status) and counts their cases from
   pytest's JUnit report: the tests are the single definition of each case.
2. Builds a tiny real bundle (real encoder and ONNX router, tiny LM arm; see tests/tiny_bundle.py),
   starts `amo serve` on a free 127.0.0.1 port on an empty registry (/readyz status), promotes the
   bundle, and runs a bounded load test from a separate process (asyncio + httpx, `--clients`
   concurrent clients for `--seconds` seconds against POST /route, varied prompts), promoting new
   bundles in the middle; then counts /metrics' families and the error responses /openapi.json
   documents. The same load, without promotions, for `--worker-seconds` against 1 and 2 uvicorn
   workers.
3. Signing: with a verify key, the registry refuses the bundle unsigned and signed with another
   key, and accepts it signed with the key's own.
4. Route p99 while a 512-token /invoke generates over route p99 alone
   (benchmarks/route_under_generation.py's measure, shorter: 2 rounds of 5 s).
Writes benchmarks/results/reliability.json (keeping keys written by other scripts, such as
benchmarks/install_size.py's) and prints the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "reliability.json"
CASES = {  # result key -> the parametrised tests whose cases it counts
    "bad_input": ["tests/test_validate.py::test_bad_data_is_refused_with_file_row_field"],
    "kill_points": ["tests/test_release.py::test_kill_during_promotion_leaves_a_whole_bundle"],
    "tamper": ["tests/test_runtime.py::test_tampered_real_bundle_is_refused_everywhere",
               "tests/test_runtime.py::test_tampered_bundle_in_the_registry_is_refused",
               "tests/test_release.py::test_tampered_bundle_is_refused",
               "tests/test_release.py::test_changed_manifest_is_refused"],
    # Each reproduces one registry or runtime hole closed in issue 14 and checks it stays closed.
    "holes": ["tests/test_release.py::test_bundle_id_that_is_a_path_is_refused_by_name",
              "tests/test_release.py::test_pointer_naming_a_path_is_refused",
              "tests/test_release.py::test_registry_paths_stay_inside_the_registry",
              "tests/test_release.py::test_corrupt_stored_copy_is_replaced_when_promoted_again",
              "tests/test_release.py::test_promotions_at_once_are_serialised_against_the_latest_champion",
              "tests/test_release.py::test_same_bundle_promoted_twice_at_once",
              "tests/test_release.py::test_promoting_the_current_bundle_changes_nothing",
              "tests/test_release.py::test_recovery_commands_work_from_a_corrupt_pointer",
              "tests/test_release.py::test_recovery_from_a_torn_history_line",
              "tests/test_release.py::test_rollback_skips_an_earlier_bundle_that_fails_verification",
              "tests/test_release.py::test_gc_never_removes_the_current_bundle",
              "tests/test_runtime.py::test_arm_changed_after_the_bundle_was_verified_is_refused_by_name",
              "tests/test_runtime.py::test_lone_surrogate_in_any_text_field_is_a_4xx"],
    "openapi_errors": ["tests/test_runtime_api.py::test_every_documented_error_status_is_produced_in_the_envelope"],
}
TOPICS = ["where is my order {n}", "track parcel {n}", "refund for order {n} please",
          "I want to return item {n}", "find red running shoes size {n}", "price of tv model {n}",
          "show me laptops under {n} dollars", "is the kettle {n} on discount", "tell me joke number {n}",
          "what is the weather in city {n}"]


def run_tests() -> dict[str, tuple[int, int]]:
    """(cases, passed) per key, from one pytest run of the reliability tests."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        tests = [t for group in CASES.values() for t in group]
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={report}", *tests], cwd=ROOT, check=False)
        cases = ET.parse(report).getroot().iter("testcase")
        outcomes = [(c.get("name", ""), c.find("failure") is None and c.find("error") is None
                     and c.find("skipped") is None) for c in cases]
    counts = {}
    for key, group in CASES.items():
        names = [t.split("::")[1] for t in group]
        mine = [ok for name, ok in outcomes if name.split("[")[0] in names]
        counts[key] = (len(mine), sum(mine))
    return counts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the load generator (a separate process) ---------------------------------------------------
async def _load(url: str, clients: int, seconds: float) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    timeline: list[tuple[float, float]] = []  # (sent, latency) to see what a promotion costs
    failures: list[str] = []
    seen: dict[str, float] = {}
    start = time.perf_counter()
    deadline = start + seconds

    async def client(index: int, http: httpx.AsyncClient) -> None:
        n = index
        while time.perf_counter() < deadline:
            prompt = TOPICS[n % len(TOPICS)].format(n=n)
            n += clients
            sent = time.perf_counter()
            try:
                response = await http.post(f"{url}/route", json={"prompt": prompt})
                ok = response.status_code == 200
                if ok:
                    seen.setdefault(response.json()["bundle_id"], round(sent - start, 2))
                else:
                    failures.append(f"{response.status_code} {response.text[:200]}")
            except Exception as exc:  # noqa: BLE001 -- every failure is counted and shown
                ok = False
                failures.append(f"{type(exc).__name__}: {exc}")
            if ok:
                latencies.append(time.perf_counter() - sent)
                timeline.append((sent - start, latencies[-1]))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    elapsed = time.perf_counter() - start
    latencies.sort()

    def quantile(q: float, values: list[float] = latencies) -> float:
        return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 2) if values else 0.0

    windows = [sorted(lat for sent, lat in timeline if w <= sent < w + 5) for w in range(0, int(seconds), 5)]

    return {"clients": clients, "seconds": round(elapsed, 2), "requests": len(latencies) + len(failures),
            "failed": len(failures), "rps": round((len(latencies) + len(failures)) / elapsed, 1),
            "p50_ms": quantile(0.50), "p99_ms": quantile(0.99),
            "mean_ms": round(1000 * statistics.fmean(latencies), 2) if latencies else 0.0,
            "bundles_seen": seen, "failures_sample": failures[:5],
            "p99_ms_per_5s": [quantile(0.99, w) for w in windows]}


# -- the run ---------------------------------------------------------------------------------
def start_server(work: Path, params: Path, port: int, server_threads: int, workers: int = 1) -> subprocess.Popen[bytes]:
    env = dict(os.environ, OMP_NUM_THREADS=str(server_threads))
    return subprocess.Popen([str(Path(sys.executable).parent / "amo"), "--params", str(params), "serve",
                             "--port", str(port), "--workers", str(workers)], cwd=work, env=env)


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    server.wait(30)


def run_load(url: str, clients: int, seconds: float) -> dict[str, Any]:
    """The load generator in a separate process, `clients` clients for `seconds` on POST /route."""
    worker = subprocess.Popen([sys.executable, __file__, "--load-worker", url, "--clients", str(clients),
                               "--seconds", str(seconds)], stdout=subprocess.PIPE, text=True)
    out, _ = worker.communicate(timeout=seconds + 120)
    return dict(json.loads(out))


def load_test(clients: int, seconds: float, promotions: int, server_threads: int,
              worker_seconds: float) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    import httpx
    import yaml
    from conftest import build_tiny_lm
    from tiny_bundle import build_tiny_bundle, tiny_params, variant

    from amo.config import GateParams
    from amo.registry import Registry

    gate = GateParams(floors={}, tolerance=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiny_lm = build_tiny_lm(work / "tiny_lm")
        bundle = build_tiny_bundle(work / "build", tiny_lm)
        registry = Registry(work / "registry")
        raw = tiny_params(tiny_lm)
        raw["registry"] = {"path": str(work / "registry")}
        raw["serve"] = {"poll_seconds": 0.5}
        (work / "params.yaml").write_text(yaml.safe_dump(raw))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(work, work / "params.yaml", port, server_threads)
        try:
            _wait_healthy(url, server, status="no_bundle")  # up, on a registry with nothing promoted
            readyz_without_bundle = httpx.get(f"{url}/readyz", timeout=5).status_code
            registry.promote(bundle, gate)
            _wait_healthy(url, server)
            cpu_before = cpu_seconds(server.pid)
            worker = subprocess.Popen([sys.executable, __file__, "--load-worker", url, "--clients",
                                       str(clients), "--seconds", str(seconds)],
                                      stdout=subprocess.PIPE, text=True)
            promoted = []
            for i in range(promotions):
                time.sleep(seconds / (promotions + 1))
                candidate = variant(bundle, work / f"next{i}", f"next{i}")
                promoted.append(registry.promote(candidate, gate).bundle_id)
            out, _ = worker.communicate(timeout=seconds + 120)
            result = json.loads(out)
            # CPU the server spent per request (bundle swaps included): what contention cannot hide.
            result["server_cpu_ms_per_request"] = round(
                1000 * (cpu_seconds(server.pid) - cpu_before) / max(1, result["requests"]), 2)
            families = [line for line in httpx.get(f"{url}/metrics").text.splitlines() if line.startswith("# TYPE ")]
            spec = httpx.get(f"{url}/openapi.json").json()
            documented = [(path, method, status) for path, operations in spec["paths"].items()
                          for method, operation in operations.items() for status in operation["responses"]
                          if int(status) >= 400]
        finally:
            stop(server)
        workers = {}
        for count in (1, 2):
            port = free_port()
            server = start_server(work, work / "params.yaml", port, server_threads, workers=count)
            try:
                _wait_healthy(f"http://127.0.0.1:{port}", server)
                measured = run_load(f"http://127.0.0.1:{port}", clients, worker_seconds)
            finally:
                stop(server)
            workers[str(count)] = {"rps": measured["rps"], "p99_ms": measured["p99_ms"],
                                   "failed": measured["failed"]}
        signing = signing_checks(bundle, work)
        encoder = "ONNX" if any("encoder" in f.name for f in (bundle / "router").iterdir()) else "torch"
    result["bundle"] = (f"tiny bundle from tests/tiny_bundle.py: real all-MiniLM-L6-v2 encoder ({encoder}) "
                        "+ ONNX router, 4 agents")
    result["promotions_during_load"] = sum(1 for b in promoted if b in result["bundles_seen"])
    result["promoted"] = promoted
    result.update(readyz_without_bundle=readyz_without_bundle, metrics_families=len(families),
                  openapi_errors_documented=len(documented), workers=workers, signing=signing)
    return result


def signing_checks(bundle: Path, work: Path) -> dict[str, bool]:
    """Whether a registry with a verify key refuses the bundle unsigned and signed with another
    key, and accepts it signed with the verify key's own private key."""
    from tiny_bundle import ec_keys, variant

    from amo.bundle import BundleError
    from amo.config import GateParams
    from amo.registry import Registry
    from amo.signing import sign_bundle

    ours, our_public = ec_keys(work / "keys", "ours")
    theirs, _ = ec_keys(work / "keys", "theirs")
    registry = Registry(work / "signed_registry", verify_key=our_public)
    gate = GateParams(floors={}, tolerance=1.0)

    def refused(candidate: Path) -> bool:
        try:
            registry.promote(candidate, gate)
        except BundleError:
            return registry.current_id() is None
        return False

    unsigned = variant(bundle, work / "unsigned", "unsigned")
    other = variant(bundle, work / "other", "other")
    sign_bundle(other, theirs)
    signed = variant(bundle, work / "signed", "signed")
    sign_bundle(signed, ours)
    return {"unsigned_refused": refused(unsigned), "wrong_key_refused": refused(other),
            "signed_accepted": registry.promote(signed, gate).accepted and registry.current_id() is not None}


def route_under_generation(model: str) -> dict[str, Any]:
    """benchmarks/route_under_generation.py's measure: route p99 during a 512-token /invoke over alone."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from route_under_generation import measure

    args = argparse.Namespace(base_model=model, tokens=512, clients=4, seconds=5.0, rounds=2, server_threads=0,
                              generation_threads=0, generation_in_thread=False)
    return measure(args)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_healthy(url: str, server: subprocess.Popen[bytes], status: str = "ok") -> None:
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("amo serve exited before it was healthy")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).json().get("status") == status:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit("amo serve was not healthy within 180 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--promotions", type=int, default=1, help="Promotions during the load test.")
    parser.add_argument("--server-threads", type=int, default=1, help="OMP/torch threads of the server.")
    parser.add_argument("--worker-seconds", type=float, default=15.0,
                        help="Seconds of the load against 1 and then 2 uvicorn workers.")
    parser.add_argument("--generation-model", choices=["tiny", "smollm2"], default="tiny",
                        help="Base model of the route-under-generation measurement.")
    parser.add_argument("--skip-tests", action="store_true", help="Only the load test (figures of the "
                        "tests are then taken from the previous result file).")
    parser.add_argument("--load-worker", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_worker:
        print(json.dumps(asyncio.run(_load(args.load_worker, args.clients, args.seconds))))
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DVC_NO_ANALYTICS"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    if args.skip_tests:
        previous = json.loads(RESULT.read_text())
        counts = {"bad_input": (previous["bad_input_cases"], previous["bad_input_refused"]),
                  "kill_points": (previous["kill_points"], previous["kill_points_whole_bundle"]),
                  "tamper": (previous["tamper_cases"], previous["tamper_refused"]),
                  "holes": (previous["holes_cases"], previous["holes_reproduced_then_closed"]),
                  "openapi_errors": (1, int(previous["openapi_errors_checked"] > 0))}
    else:
        counts = run_tests()
    load = load_test(args.clients, args.seconds, args.promotions, args.server_threads, args.worker_seconds)
    generation = route_under_generation(args.generation_model)
    previous = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    result = {**previous,
        "command": "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0])), *sys.argv[1:]]),
        "bad_input_cases": counts["bad_input"][0], "bad_input_refused": counts["bad_input"][1],
        "kill_points": counts["kill_points"][0], "kill_points_whole_bundle": counts["kill_points"][1],
        "tamper_cases": counts["tamper"][0], "tamper_refused": counts["tamper"][1],
        "holes_cases": counts["holes"][0], "holes_reproduced_then_closed": counts["holes"][1],
        "readyz_without_bundle": load["readyz_without_bundle"],
        "metrics_families": load["metrics_families"],
        # every error status /openapi.json documents, each produced by a real request and checked
        # against its schema by the envelope test (0 when that test failed)
        "openapi_errors_checked": load["openapi_errors_documented"] if counts["openapi_errors"][1] else 0,
        "workers": load["workers"],
        "route_p99_during_invoke_ratio": generation["p99_ratio"],
        "signing": load["signing"],
        "load": {k: load[k] for k in ("clients", "seconds", "requests", "failed", "rps", "p50_ms",
                                      "p99_ms", "promotions_during_load")},
        "load_details": {"mean_ms": load["mean_ms"], "bundles_seen_at_s": load["bundles_seen"],
                         "server_cpu_ms_per_request": load["server_cpu_ms_per_request"],
                         "p99_ms_per_5s_window": load["p99_ms_per_5s"],
                         "failures_sample": load["failures_sample"], "endpoint": "POST /route",
                         "server": "amo serve, uvicorn 1 worker, 127.0.0.1",
                         "server_threads": args.server_threads, "load_generator":
                         "separate process, asyncio + httpx, one connection per client",
                         "bundle": load["bundle"],
                         "machine": f"{os.cpu_count()} cores; load average "
                                    f"at the end {os.getloadavg()[0]:.1f}"},
        "workers_details": {"seconds": args.worker_seconds, "clients": args.clients, "endpoint": "POST /route",
                            "server": "amo serve --workers N, no promotions"},
        "route_under_generation": {k: generation[k] for k in ("alone", "during_generation", "invokes",
                                                               "p99_ratio", "target_p99_ratio", "setup")},
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
