"""A new agent, end to end, on the demo copilot (issue 13).

    python benchmarks/new_agent.py --repo ../scratch/demo

`--repo` is a trained demo project (after `dvc repro` and `amo promote`: data, artifacts, metrics,
build/bundle, registry; default: this project). It is never modified: its data, artifacts,
metrics, build, registry, .dvc (with the cache), dvc.yaml, dvc.lock, params.yaml, data.dvc and
src/ are copied into `--work` (default benchmarks/.cache/new_agent/, wiped first), which is
`git init`-ed and committed once so that DVC and the manifests' git commit work there. The copy
keeps the given repo's src/ because dvc.yaml lists it as the stages' code deps (so DVC restores
the arms instead of retraining them); the code that runs is this checkout's src/, snapshotted
into `--work`/code at the start (PYTHONPATH) so that one version of amo runs the whole journey
even while the checkout changes; the result names its commit.

In the copy, `amo serve` runs on a free port (params.yaml's serve.poll_seconds). Then for three
new shopping agents (gift_cards, store_pickup, trade_in: plausible additions to the demo's 14),
one at a time and cumulatively:

1. rows = 0, the cheap path: `amo agents add ID --description ... --domain shopping --publish`
   (index-only bundle derived from the champion, gated, promoted).
2. rows = 20: `amo data add --routing ROWS --traces TRACES` with 20 routing rows
   (`{"ID": 2}`) and 10 traces that use the agent, then the full retrain: `dvc repro`, then
   `amo promote build/bundle --report FILE` (exit 3: rejected).

After each step, the agent's 12 test prompts (written for it, never in the data) are sent to the
served runtime: route_top1 = share whose POST /route top agent is the agent; plan_contains =
share whose POST /plan path contains it; copilot_calls = share whose POST /copilot `calls` name
it. seconds_to_served = wall time from the start of the step's first command until GET /healthz
names the bundle the registry's `current` then points to (null if nothing was promoted);
rows = 20 counts `amo data add` + `dvc repro` + `amo promote`. Each step also records the gate's
decision lines, whether the gate scored both bundles on the same data and checked every arm
against the base model, and the earlier new agents' route_top1 / plan_contains (forgetting).
At the end 12 out-of-scope prompts go to POST /copilot: no arm should run for them.

Writes benchmarks/results/new_agent.json (the targets of issue 13, each with `met`) and prints it.
Logs of every command stay in `--work`/logs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import yaml
from reliability import _wait_healthy, free_port

from amo.data import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "new_agent.json"
COPIED = [
    "data",
    "artifacts",
    "metrics",
    "build",
    "registry",
    ".dvc",
    "src",
    "dvc.yaml",
    "dvc.lock",
    "params.yaml",
    "data.dvc",
    ".dvcignore",
    ".gitignore",
]
SAME_DATA = "basis: candidate and champion scored on the same, current test data"

# -- the new agents: description, 12 test prompts (never in the data), 20 routing rows, 10 traces --
AGENTS: list[dict[str, Any]] = [
    {
        "id": "gift_cards",
        "description": (
            "Sells, sends and redeems store gift cards: buys a physical or e-gift card for a chosen "
            "amount, checks the remaining balance of a card, and applies a gift card code to an order."
        ),
        "test": [
            "I'd like to buy a $50 gift card for my nephew",
            "how much is left on my gift card",
            "can you email a gift voucher to my sister for her birthday",
            "where do I type in the code from my gift card",
            "do your gift cards expire",
            "I got a store voucher for Christmas, how do I use it online",
            "send a 100 euro e-gift card to a colleague who's leaving",
            "what's the balance on card number 6031 4478",
            "can I top up the gift card I already have",
            "is there a gift card in a nice box I can hand over in person",
            "buy a gift certificate for someone who loves running gear",
            "can I choose the amount on a digital gift card",
        ],
        "rows": [
            "I want to get my mum a gift card",
            "check my gift card balance please",
            "how do I redeem a gift card on the app",
            "send an e-gift card to my friend tonight",
            "what amounts do your gift cards come in",
            "can I buy a gift voucher and print it at home",
            "is there anything left on the voucher I got for my birthday",
            "add my gift card to my account so I can spend it later",
            "I'd like three 25 dollar gift cards for the office raffle",
            "can a gift card be used in the physical stores too",
            "schedule an e-gift card to arrive on her birthday",
            "I lost my gift card, can the balance be moved to a new one",
            "how long is a gift card valid for",
            "can I get a gift card instead of picking a present",
            "apply my gift card code 7781-2210 to my basket",
            "buy an electronic gift card and text it to my brother",
            "what's my voucher worth right now",
            "can I use two gift cards on one order",
            "personalise the message on an e-gift card",
            "reload my gift card with another $30",
        ],
        "traces": [
            ("buy a $40 gift card and email it to my cousin", ["gift_cards"]),
            ("how much credit is still on my gift voucher", ["gift_cards"]),
            ("send an e-gift card for 75 dollars to my neighbour", ["gift_cards"]),
            ("find a nice yoga mat, then put my gift card code on the order", ["product_search", "gift_cards"]),
            (
                "check what's left on my gift card, then show me headphones I could get with it",
                ["gift_cards", "product_search"],
            ),
            (
                "tell me my gift card balance and after that how much the Sony headphones cost",
                ["gift_cards", "price_lookup"],
            ),
            (
                "first find a coffee maker, then check its price, and finally buy a gift card for that amount",
                ["product_search", "price_lookup", "gift_cards"],
            ),
            ("log me back into my account, then add my gift card to it", ["account_management", "gift_cards"]),
            (
                "redeem my gift card on order #55012; once that's done, send me the invoice",
                ["gift_cards", "payment_billing"],
            ),
            (
                "my gift card balance looks wrong, check it and then get me a real person",
                ["gift_cards", "human_support_handoff"],
            ),
        ],
    },
    {
        "id": "store_pickup",
        "description": (
            "Arranges click-and-collect: checks which nearby stores have an item in stock, reserves it for "
            "in-store pickup, and tells the shopper when and where the order is ready to collect."
        ),
        "test": [
            "can I pick up the air fryer at your downtown store today",
            "which shop near me has the Bose headphones on the shelf",
            "reserve the blue backpack so I can grab it after work",
            "is my click and collect order ready yet",
            "what time can I come by the store to get my reserved order",
            "hold a size 42 pair of running shoes at the Main Street branch",
            "does the store in the mall have the Garmin smartwatch in stock",
            "how long will you keep my order at the collection desk",
            "can my husband collect my order for me at the shop",
            "buy online and pick up in store for the office chair please",
            "which branch is the quickest place to get a robot vacuum today",
            "I got a text saying my order is at the store, what do I need to bring",
        ],
        "rows": [
            "is the Dell 4K monitor in stock at the store near 10115",
            "I'd like to reserve the coffee maker and pick it up tomorrow",
            "can I collect my order from the shop on Saturday",
            "check stock of the Nike running shoes at my local store",
            "where is the collection point inside the store",
            "set my order to in-store pickup",
            "what do I need to show when I pick up my order",
            "my order has been ready for collection for a week, will you cancel it",
            "can I change which store I collect from",
            "put the winter jacket aside for me at the city centre branch",
            "is same-day click and collect available for the desk lamp",
            "which stores have the Lenovo gaming laptop available to take home today",
            "I'm outside the store, where do I go to get my order",
            "can a friend pick up my reserved items",
            "how will I know when my pickup order is ready",
            "reserve two yoga mats at the store by the station",
            "is there a locker at the store for after-hours collection",
            "the app says ready to collect but the store says it isn't there",
            "hold the electric toothbrush for me until Friday",
            "does the branch on the high street have the smartwatch I want",
        ],
        "traces": [
            ("reserve the Philips air fryer for pickup at my nearest store", ["store_pickup"]),
            ("is my collection order at the Oslo store ready", ["store_pickup"]),
            ("change my pickup store to the one by the airport", ["store_pickup"]),
            (
                "find a warm winter jacket, then check which store near me has it to collect today",
                ["product_search", "store_pickup"],
            ),
            (
                "how much are the Sony headphones, then hold a pair at the store for me",
                ["price_lookup", "store_pickup"],
            ),
            (
                "where is order #55120, and after that tell me when it's ready to collect at the store",
                ["order_status", "store_pickup"],
            ),
            (
                "compare the Samsung and Apple smartwatch, then reserve the better one at my local shop",
                ["product_comparison", "store_pickup"],
            ),
            (
                "first find a mechanical keyboard, then check its price, and finally put one aside at the store",
                ["product_search", "price_lookup", "store_pickup"],
            ),
            (
                "reserve the office chair at the branch; once that's done, tell me if I can pay by bank transfer",
                ["store_pickup", "payment_billing"],
            ),
            (
                "the store lost my reserved order, look it up and then get me a person",
                ["store_pickup", "human_support_handoff"],
            ),
        ],
    },
    {
        "id": "trade_in",
        "description": (
            "Runs the trade-in programme: estimates what an old device (phone, laptop, watch, console) is "
            "worth as store credit from its model and condition, and books its drop-off or collection."
        ),
        "test": [
            "how much would I get for my old iPhone if I trade it in",
            "can I swap my broken laptop for credit towards a new one",
            "what's my used Garmin watch worth in store credit",
            "do you accept old game consoles as part exchange",
            "I have a cracked Samsung phone, is it still worth trading in",
            "book a courier to collect the tablet I'm trading in",
            "trade in my two-year-old headphones",
            "does the trade-in value go up if I still have the original box",
            "can I put credit from my old laptop toward the gaming laptop",
            "where do I drop off the phone I'm exchanging for credit",
            "what condition does a device need to be in for part exchange",
            "get me a quote for my old Dell monitor",
        ],
        "rows": [
            "what will you give me for my old phone",
            "trade in my MacBook for store credit",
            "how does the trade-in programme work",
            "is my old Sony PlayStation worth anything to you",
            "value my used smartwatch, it has a scratched screen",
            "can I part exchange my old coffee maker",
            "arrange pickup for my trade-in laptop",
            "I want to give back my old tablet and get money off a new one",
            "when will the trade-in credit show up in my account",
            "what do I need to wipe before sending my phone for trade-in",
            "do you take Android phones for trade-in or only Apple",
            "estimate the credit for a Lenovo laptop from 2019",
            "my trade-in quote was lower than promised, why",
            "can I trade in a phone that won't switch on",
            "exchange my old headphones for a discount on the Bose ones",
            "where's the nearest drop-off point for trade-ins",
            "does the trade-in credit expire",
            "I sent my old watch for trade-in last week, has it been assessed",
            "can I trade in more than one device at once",
            "what's the best trade-in offer you have on old consoles",
        ],
        "traces": [
            ("how much credit for my old Samsung phone in good condition", ["trade_in"]),
            ("book a collection for the console I'm trading in", ["trade_in"]),
            ("is a cracked screen going to lower my trade-in value", ["trade_in"]),
            (
                "value my old laptop, then show me gaming laptops I could get with the credit",
                ["trade_in", "product_search"],
            ),
            (
                "get a trade-in estimate for my watch, then tell me the price of the Garmin smartwatch",
                ["trade_in", "price_lookup"],
            ),
            (
                "compare the Apple and Samsung smartwatch, then tell me what my old one would fetch in trade-in",
                ["product_comparison", "trade_in"],
            ),
            (
                "quote my old tablet for trade-in; once that's done, how much is delivery of the new one to 40210",
                ["trade_in", "shipping_delivery"],
            ),
            ("find a new robot vacuum and after that see if I can trade in my old one", ["product_search", "trade_in"]),
            (
                "first trade in my headphones, then find new wireless headphones, and finally check their price",
                ["trade_in", "product_search", "price_lookup"],
            ),
            (
                "my trade-in credit never arrived, check it and then put me through to a person",
                ["trade_in", "human_support_handoff"],
            ),
        ],
    },
]
OUT_OF_SCOPE = [
    "what's the weather going to be like in Berlin tomorrow",
    "who won the football world cup in 2010",
    "tell me a joke about penguins",
    "how many moons does Jupiter have",
    "write a haiku about autumn leaves",
    "what's the capital of Australia",
    "how do I convert Celsius to Fahrenheit",
    "give me a workout plan for beginners",
    "translate good morning into Spanish",
    "summarise the plot of Pride and Prejudice",
    "what's a good recipe for vegetable curry",
    "explain how a black hole forms",
]


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="a trained project (never modified)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".cache" / "new_agent")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--copilot-timeout", type=float, default=600.0, help="seconds per /copilot request")
    parser.add_argument(
        "--serve-timeout", type=float, default=600.0, help="seconds to wait for the runtime to serve a promoted bundle"
    )
    return parser.parse_args(argv)


def relative(path: Path) -> str:
    return os.path.relpath(path.resolve(), ROOT)


def environment(code: Path) -> dict[str, str]:
    """The code under test and this venv, offline, no analytics, no Prefect API (no events sent)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(code),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        DVC_NO_ANALYTICS="1",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        GX_ANALYTICS_ENABLED="false",
    )
    return env


class Shell:
    """Runs the journey's commands in the copy, each logged to logs/NN-name.log."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.env, self.count = work, env, 0
        (work / "logs").mkdir(parents=True, exist_ok=True)

    def run(self, name: str, *args: str) -> dict[str, Any]:
        self.count += 1
        start = time.monotonic()
        done = subprocess.run(list(args), cwd=self.work, env=self.env, capture_output=True, text=True, check=False)
        seconds = time.monotonic() - start
        log = self.work / "logs" / f"{self.count:02d}-{name}.log"
        log.write_text(
            f"$ {shlex.join(args)}\nexit {done.returncode} after {seconds:.1f} s\n"
            f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}",
            encoding="utf-8",
        )
        print(f"[{name}] exit {done.returncode} in {seconds:.1f} s", flush=True)
        return {
            "command": shlex.join(args),
            "exit": done.returncode,
            "seconds": round(seconds, 1),
            "stdout": done.stdout,
            "stderr": done.stderr,
            "log": relative(log),
        }


def git(folder: Path, *args: str) -> str | None:
    done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def snapshot_code(work: Path) -> dict[str, Any]:
    """This checkout's src/ as it is now, into `work`/code/src; its commit and uncommitted files."""
    shutil.copytree(ROOT / "src", work / "code" / "src", ignore=shutil.ignore_patterns("__pycache__"))
    dirty = git(ROOT, "status", "--porcelain", "--", "src")
    return {"commit": git(ROOT, "rev-parse", "HEAD"), "uncommitted_src": dirty.splitlines() if dirty else []}


def copy_repo(repo: Path, work: Path) -> None:
    """The given repo's trained state, into a fresh git repository at `work`."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in COPIED:
        source = repo / name
        if source.is_dir():
            skip = shutil.ignore_patterns("tmp") if name == ".dvc" else None  # DVC's locks and state
            shutil.copytree(source, work / name, ignore=skip)
        elif source.is_file():
            shutil.copy2(source, work / name)
    git = ["git", "-c", "user.name=amo benchmark", "-c", "user.email=benchmark@example.invalid"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "trained copy for benchmarks/new_agent.py"]):
        subprocess.run([*git, *args], cwd=work, check=True, capture_output=True)


def current(work: Path) -> str | None:
    path = work / "registry" / "current.json"
    return json.loads(path.read_text())["bundle_id"] if path.is_file() else None


def wait_served(url: str, bundle_id: str, start: float, timeout: float) -> float | None:
    """Seconds from `start` until /healthz names `bundle_id`; None if it never did in time."""
    while time.monotonic() - start < timeout:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).json().get("bundle_id") == bundle_id:
                return round(time.monotonic() - start, 1)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return None


def decision(stdout: str, candidate: Path) -> dict[str, Any] | None:
    """The gate's verdict and decision lines from `amo promote` / `amo agents publish` output, and
    whether both bundles were scored on the same data and every arm of the candidate was checked
    against the base model."""
    lines = stdout.splitlines()
    heads = [i for i, line in enumerate(lines) if re.match(r"^(PROMOTED|REJECTED) \S+ \(champion: ", line)]
    if not heads:
        return None
    head = re.match(r"^(\S+) (\S+) \(champion: (\S+)\)", lines[heads[-1]])
    assert head is not None
    reasons = []
    for line in lines[heads[-1] + 1 :]:
        if not line.startswith("  - "):
            break
        reasons.append(line[4:])
    runtime = candidate / "runtime.json"
    arms = json.loads(runtime.read_text())["arms"] if runtime.is_file() else []
    checked = {
        arm: any(re.match(rf"^(ok|FAILED): arms\.{re.escape(arm)} = \S+ vs base model", r) for r in reasons)
        for arm in arms
    }
    return {
        "verdict": head.group(1),
        "bundle_id": head.group(2),
        "champion": head.group(3),
        "reasons": reasons,
        "same_data": bool(reasons) and reasons[0] == SAME_DATA,
        "arms_checked_vs_base": checked,
        "arms_gated": bool(arms) and all(checked.values()),
        "failed": [r for r in reasons if r.startswith("FAILED")],
    }


def report_row(report: Path, agent: str) -> dict[str, str] | None:
    """The agent's row of the promotion report's per-agent table (amo's own test split)."""
    if not report.is_file():
        return None
    for line in report.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] == agent:
            names = ["route_top1", "route_top1_champion", "plan_contains", "plan_contains_champion"]
            return dict(zip(names, cells[1:]))
    return None


def ask(
    http: httpx.Client, url: str, agent: str, prompts: list[str], copilot: bool, copilot_timeout: float
) -> dict[str, Any]:
    """route_top1, plan_contains (and copilot_calls) of `agent` over `prompts`, from the runtime."""
    rows, bundles = [], set()
    for prompt in prompts:
        route = http.post(f"{url}/route", json={"prompt": prompt}).json()
        plan = http.post(f"{url}/plan", json={"prompt": prompt}).json()
        bundles |= {route["bundle_id"], plan["bundle_id"]}
        row: dict[str, Any] = {
            "prompt": prompt,
            "route": [a["id"] for a in route["route"]["agents"]],
            "plan": plan["plan"]["path"],
        }
        if copilot:
            start = time.monotonic()
            response = http.post(f"{url}/copilot", json={"prompt": prompt}, timeout=copilot_timeout)
            answer = response.json()
            if response.status_code != 200:  # e.g. 504: generation slower than the runtime's timeout
                answer = {"calls": [], "out_of_scope": None, "error": {"status": response.status_code, **answer}}
                row["copilot_error"] = answer["error"]
            else:
                bundles.add(answer["bundle_id"])
            row["calls"] = [f"{c['agent']}:{c['arm']}" if c["arm"] else c["agent"] for c in answer["calls"]]
            row["arm_calls"] = sum(1 for c in answer["calls"] if c["arm"] is not None)
            row["out_of_scope"] = answer["out_of_scope"]
            row["copilot_seconds"] = round(time.monotonic() - start, 2)
        rows.append(row)
    n = len(rows)
    out: dict[str, Any] = {
        "route_top1": round(sum(bool(r["route"]) and r["route"][0] == agent for r in rows) / n, 4),
        "plan_contains": round(sum(agent in r["plan"] for r in rows) / n, 4),
    }
    if copilot:
        out["copilot_calls"] = round(sum(any(c.split(":")[0] == agent for c in r["calls"]) for r in rows) / n, 4)
        out["copilot_seconds_mean"] = round(sum(r["copilot_seconds"] for r in rows) / n, 2)
    out["served_bundles"] = sorted(bundles)
    out["prompts"] = rows
    return out


def write_rows(folder: Path, agent: dict[str, Any]) -> tuple[Path, Path]:
    """The agent's 20 routing rows and 10 traces as JSON Lines files for `amo data add`."""
    routing, traces = folder / f"{agent['id']}_routing.jsonl", folder / f"{agent['id']}_traces.jsonl"
    write_jsonl(routing, [{"prompt": p, "labels": {agent["id"]: 2}} for p in agent["rows"]])
    write_jsonl(
        traces,
        [
            {
                "prompt": p,
                "path": path,
                "links": [list(link) for link in pairwise(path)],
                "outcome": "handoff" if path[-1] == "human_support_handoff" else "success",
            }
            for p, path in agent["traces"]
        ],
    )
    return routing, traces


def failure(step: dict[str, Any]) -> dict[str, Any]:
    """What a failed command printed last (it blocks the journey; amo is not patched here)."""
    tail = "\n".join((step["stdout"] + step["stderr"]).strip().splitlines()[-25:])
    return {"command": step["command"], "exit": step["exit"], "output_tail": tail, "log": step["log"]}


def cheap_path(shell: Shell, url: str, agent: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    before = current(shell.work)
    start = time.monotonic()
    add = shell.run(
        f"{agent['id']}-agents-add",
        "amo",
        "agents",
        "add",
        agent["id"],
        "--description",
        agent["description"],
        "--domain",
        "shopping",
        "--publish",
    )
    after = current(shell.work)
    promoted = add["exit"] == 0 and after != before
    served = wait_served(url, after, start, args.serve_timeout) if promoted and after else None
    step = {
        "id": agent["id"],
        "rows": 0,
        "promoted": promoted,
        "seconds_to_served": served,
        "seconds": {"agents_add_publish": add["seconds"]},
        "gate": decision(add["stdout"], shell.work / "build" / "index-bundle"),
        "exit": add["exit"],
    }
    if add["exit"] not in (0, 3):
        step["error"] = failure(add)
    return step


def full_retrain(shell: Shell, url: str, agent: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    routing, traces = write_rows(shell.work / "new_rows", agent)
    before = current(shell.work)
    step: dict[str, Any] = {
        "id": agent["id"],
        "rows": len(agent["rows"]),
        "traces": len(agent["traces"]),
        "promoted": False,
        "seconds_to_served": None,
        "seconds": {},
    }
    start = time.monotonic()
    add = shell.run(
        f"{agent['id']}-data-add",
        "amo",
        "data",
        "add",
        "--routing",
        str(routing.relative_to(shell.work)),
        "--traces",
        str(traces.relative_to(shell.work)),
    )
    step["seconds"]["data_add"] = add["seconds"]
    if add["exit"] != 0:
        step["error"] = failure(add)
        return step
    step["split"] = json.loads(add["stdout"][add["stdout"].index("{") : add["stdout"].rindex("}") + 1])
    repro = shell.run(f"{agent['id']}-dvc-repro", "dvc", "repro")
    step["seconds"]["dvc_repro"] = repro["seconds"]
    step["stages_run"] = re.findall(r"Running stage '([^']+)'", repro["stdout"] + repro["stderr"])
    if repro["exit"] != 0:
        step["error"] = failure(repro)
        return step
    report = shell.work / "logs" / f"{agent['id']}-promote.md"
    promote = shell.run(f"{agent['id']}-promote", "amo", "promote", "build/bundle", "--report", str(report))
    step["seconds"]["promote"] = promote["seconds"]
    after = current(shell.work)
    step["exit"] = promote["exit"]
    step["promoted"] = promote["exit"] == 0 and after != before
    step["gate"] = decision(promote["stdout"], shell.work / "build" / "bundle")
    step["gate_per_agent"] = report_row(report, agent["id"])
    if promote["exit"] not in (0, 3):
        step["error"] = failure(promote)
    if step["promoted"] and after:
        step["seconds_to_served"] = wait_served(url, after, start, time.monotonic() - start + args.serve_timeout)
    return step


def targets(steps: list[dict[str, Any]], abstain: dict[str, Any], gate: dict[str, Any]) -> list[dict[str, Any]]:
    cheap = [s for s in steps if s["rows"] == 0]
    full = [s for s in steps if s["rows"] > 0]
    out = [
        {
            "target": f"{s['id']}, rows 0: plan_contains >= route_top1 (the plan follows the router)",
            "value": [s["plan_contains"], s["route_top1"]],
            "met": s["plan_contains"] >= s["route_top1"],
        }
        for s in cheap
    ]
    out += [
        {
            "target": f"{s['id']}, rows 0: seconds_to_served <= 60 (cheap path)",
            "value": s["seconds_to_served"],
            "met": s["seconds_to_served"] is not None and s["seconds_to_served"] <= 60,
        }
        for s in cheap
    ]
    for s in full:
        out += [
            {
                "target": f"{s['id']}, rows {s['rows']}: route_top1 >= 0.9",
                "value": s["route_top1"],
                "met": s["route_top1"] >= 0.9,
            },
            {
                "target": f"{s['id']}, rows {s['rows']}: plan_contains >= 0.9",
                "value": s["plan_contains"],
                "met": s["plan_contains"] >= 0.9,
            },
            {
                "target": f"{s['id']}, rows {s['rows']}: the retrain promoted",
                "value": s["promoted"],
                "met": s["promoted"],
            },
        ]
    out += [
        {
            "target": "copilot_arm_calls = 0 on out-of-scope prompts",
            "value": abstain["copilot_arm_calls"],
            "met": abstain["copilot_arm_calls"] == 0,
        },
        {
            "target": "gate scores candidate and champion on the same data",
            "value": gate["same_data"],
            "met": gate["same_data"],
        },
        {
            "target": "gate checks the arms against the base model",
            "value": gate["arms_gated"],
            "met": gate["arms_gated"],
        },
    ]
    return out


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    repo, work = args.repo.resolve(), args.work.resolve()
    if current(repo) is None:
        raise SystemExit(f"{repo}: no promoted bundle (registry/current.json); train and promote it first")
    began, load = time.monotonic(), {"start": os.getloadavg()}
    copy_repo(repo, work)
    code = snapshot_code(work)
    champion = current(work)
    shell = Shell(work, environment(work / "code" / "src"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_log = open(work / "logs" / "serve.log", "w")  # noqa: SIM115 -- open while the server runs
    server = subprocess.Popen(
        ["amo", "serve", "--port", str(port)], cwd=work, stdout=server_log, stderr=subprocess.STDOUT,
        # The runtime's request timeout (120 s) would cut off a first /copilot that loads the base
        # model and generates at a lower CPU priority on a busy machine: give it the benchmark's.
        env={**shell.env, "AMO_REQUEST_TIMEOUT_SECONDS": str(args.copilot_timeout)},
    )
    steps: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    try:
        _wait_healthy(url, server)  # type: ignore[arg-type]
        with httpx.Client(timeout=120) as http:
            for k, agent in enumerate(AGENTS):
                for run in (cheap_path, full_retrain):
                    step = run(shell, url, agent, args)
                    if "error" in step:
                        errors.append({"agent": agent["id"], "rows": step["rows"], **step["error"]})
                    start = time.monotonic()
                    step.update(ask(http, url, agent["id"], agent["test"], True, args.copilot_timeout))
                    step["earlier_agents"] = {
                        a["id"]: {
                            key: value
                            for key, value in ask(http, url, a["id"], a["test"], False, 0).items()
                            if key in ("route_top1", "plan_contains")
                        }
                        for a in AGENTS[:k]
                    }
                    step["seconds"]["measure"] = round(time.monotonic() - start, 1)
                    steps.append(step)
                    shown = (
                        "id",
                        "rows",
                        "route_top1",
                        "plan_contains",
                        "copilot_calls",
                        "promoted",
                        "seconds_to_served",
                    )
                    print(json.dumps({key: step.get(key) for key in shown}), flush=True)
            oos = ask(http, url, "", OUT_OF_SCOPE, True, args.copilot_timeout)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
    abstain = {
        "n": len(OUT_OF_SCOPE),
        "copilot_arm_calls": sum(r["arm_calls"] for r in oos["prompts"]),
        "out_of_scope": sum(r["out_of_scope"] for r in oos["prompts"]),
        "route_abstained": sum(not r["route"] for r in oos["prompts"]),
        "served_bundles": oos["served_bundles"],
        "prompts": oos["prompts"],
    }
    decisions = [s["gate"] for s in steps if s.get("gate")]
    gate = {
        "same_data": bool(decisions) and all(d["same_data"] for d in decisions),
        "arms_gated": bool(decisions) and all(d["arms_gated"] for d in decisions),
        "by_step": [
            {
                "id": s["id"],
                "rows": s["rows"],
                **{key: (s.get("gate") or {}).get(key) for key in ("same_data", "arms_gated")},
            }
            for s in steps
        ],
    }
    command = "python benchmarks/new_agent.py" + (f" --repo {relative(repo)}" if repo != ROOT else "")
    load["end"] = os.getloadavg()
    result = {
        "command": command,
        "repo": relative(repo),
        "repo_commit": git(repo, "rev-parse", "HEAD"),
        "code_under_test": code,
        "champion_at_start": champion,
        "load_average_1_5_15min": {k: [round(x, 2) for x in v] for k, v in load.items()},
        "cpus": os.cpu_count(),
        "serve_poll_seconds": yaml.safe_load((work / "params.yaml").read_text())["serve"]["poll_seconds"],
        "agents": steps,
        "abstain_prompts": abstain,
        "gate": gate,
        "targets": targets(steps, abstain, gate),
        "errors": errors,
        "seconds_total": round(time.monotonic() - began, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
