"""Reliability figures of the release path (issue 7).

    python benchmarks/reliability.py [--clients 16] [--seconds 30] [--promotions 1]

1. Runs the reliability tests (bad-input corpus, kill -9 during promotion, tampered bundles) and
   counts their cases from pytest's JUnit report: the tests are the single definition of each case.
2. Builds a tiny real bundle (real encoder and ONNX router, tiny LM arm; see tests/tiny_bundle.py),
   promotes it into a fresh registry, starts `amo serve` on a free 127.0.0.1 port, and runs a
   bounded load test from a separate process (asyncio + httpx, `--clients` concurrent clients for
   `--seconds` seconds against POST /route, varied prompts), promoting new bundles in the middle.
Writes benchmarks/results/reliability.json and prints the figures.
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
def load_test(clients: int, seconds: float, promotions: int, server_threads: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
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
        registry.promote(bundle, gate)
        raw = tiny_params(tiny_lm)
        raw["registry"] = {"path": str(work / "registry")}
        raw["serve"] = {"poll_seconds": 0.5}
        (work / "params.yaml").write_text(yaml.safe_dump(raw))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, OMP_NUM_THREADS=str(server_threads))
        server = subprocess.Popen([str(Path(sys.executable).parent / "amo"), "--params",
                                   str(work / "params.yaml"), "serve", "--port", str(port)],
                                  cwd=work, env=env)
        try:
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
        finally:
            server.terminate()
            server.wait(30)
        encoder = "ONNX" if any("encoder" in f.name for f in (bundle / "router").iterdir()) else "torch"
    result["bundle"] = (f"tiny bundle from tests/tiny_bundle.py: real all-MiniLM-L6-v2 encoder ({encoder}) "
                        "+ ONNX router, 4 agents")
    result["promotions_during_load"] = sum(1 for b in promoted if b in result["bundles_seen"])
    result["promoted"] = promoted
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_healthy(url: str, server: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("amo serve exited before it was healthy")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).json().get("status") == "ok":
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
                  "tamper": (previous["tamper_cases"], previous["tamper_refused"])}
    else:
        counts = run_tests()
    load = load_test(args.clients, args.seconds, args.promotions, args.server_threads)
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0])), *sys.argv[1:]]),
        "bad_input_cases": counts["bad_input"][0], "bad_input_refused": counts["bad_input"][1],
        "kill_points": counts["kill_points"][0], "kill_points_whole_bundle": counts["kill_points"][1],
        "tamper_cases": counts["tamper"][0], "tamper_refused": counts["tamper"][1],
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
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
