"""The runtime's decision log: every /route, /plan and /copilot answer, and the feedback on it.

    logs/decisions/decisions-20261207T024500123456Z-p4242.jsonl   one JSON object a line
    logs/decisions/feedback-20261207T024512000001Z-p4242.jsonl

The store is JSON Lines segments: append-only files, one open segment per kind per process (so
uvicorn workers never share a file and need no lock between them), a new one past
`serve.decision_segment_bytes` or `serve.decision_segment_seconds`; names sort in the order they
were opened. Readers (amo.harvest) need nothing but the files: `cat`, `jq` and `grep` read them,
they are copied or deleted a segment at a time, and a crash can only tear a segment's last line,
which readers skip with a warning. (SQLite would give one file and queries, but one writer at a
time across workers, and a write that is a transaction rather than one write(2).)

Durability rule: a decision's line is handed to the kernel by one O_APPEND write(2) of the whole
line before its response is sent, so `kill -9` of the runtime loses no answered decision; a
background thread fsyncs every `serve.decision_fsync_seconds`, so power loss loses at most that
window. A write that fails answers 503 `decision_log_failed` (nothing is answered unlogged).

A decision holds its request id, time, bundle id, endpoint, the route (agents with scores, the
separator), the plan (copilot and plan), latency, and the prompt's sha256; the prompt itself only
with `serve.log_prompts`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from amo.config import ConfigError

log = logging.getLogger("amo.decisions")

DECISIONS, FEEDBACK, SHADOW = "decisions", "feedback", "shadow"  # shadow: amo.shadow's records
FORMAT = 1  # the "v" of every line
SEGMENT = re.compile(r"(decisions|feedback|shadow)-\d{8}T\d{12}Z-p\d+(-\d+)?\.jsonl")


def utc_now() -> str:
    """The time written in the log: UTC, milliseconds, sortable as text."""
    now = time.time_ns() // 1_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now // 1000)) + f".{now % 1000:03d}Z"


def prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


class Segments:
    """Append-only JSON Lines segments of one kind in `folder`, written by this process only."""

    def __init__(self, folder: Path, kind: str, max_bytes: int, max_seconds: float) -> None:
        self.folder, self.kind = folder, kind
        self.max_bytes, self.max_seconds = max_bytes, max_seconds
        self.path: Path | None = None
        self._fd: int | None = None
        self._size = 0
        self._opened = 0.0
        self._dirty = False
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        """Write `record` as one line with one write(2) (returns once the kernel holds it)."""
        line = _line(record)
        with self._lock:
            if (self._fd is None or (self._size and self._size + len(line) > self.max_bytes)
                    or time.monotonic() - self._opened > self.max_seconds):
                self._rotate()
            assert self._fd is not None
            try:
                written = os.write(self._fd, line)
                while written < len(line):  # a short write (disk nearly full): finish the line
                    written += os.write(self._fd, line[written:])
            except OSError:
                self._close()  # the line may be torn: the next record starts a new segment
                raise
            self._size += len(line)
            self._dirty = True

    def _rotate(self) -> None:
        self._close()
        self.folder.mkdir(parents=True, exist_ok=True)
        now = time.time_ns() // 1000  # one reading: seconds and microseconds of the same instant
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 1_000_000)) + f"{now % 1_000_000:06d}Z"
        for attempt in range(100):
            name = f"{self.kind}-{stamp}-p{os.getpid()}" + (f"-{attempt}" if attempt else "") + ".jsonl"
            try:
                # 0o600: the log may hold prompts
                self._fd = os.open(self.folder / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            self.path = self.folder / name
            break
        else:
            raise FileExistsError(f"{self.folder}: no free segment name for {stamp}")
        self._size, self._opened = 0, time.monotonic()
        folder_fd = os.open(self.folder, os.O_RDONLY)  # the new name survives power loss too
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def sync(self) -> None:
        """fsync what was written since the last sync, outside the writers' lock (on a dup of the
        segment's descriptor, so a rotation meanwhile closes nothing under it)."""
        with self._lock:
            if self._fd is None or not self._dirty:
                return
            fd, self._dirty = os.dup(self._fd), False
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._close()


def segments(folder: Path, kind: str) -> list[Path]:
    """The segments of `kind` in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"{kind}-*.jsonl") if SEGMENT.fullmatch(p.name))


def _records(path: Path, data: bytes, first_line: int = 1) -> Iterator[dict[str, Any]]:
    """Whole-line JSON objects in `data`; anything else is skipped with a warning."""
    for number, raw in enumerate(data.splitlines(keepends=True), first_line):
        if not raw.endswith(b"\n"):
            log.warning("%s line %d: torn last line (%d bytes, a crash mid-write?), skipped", path, number, len(raw))
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            log.warning("%s line %d: not JSON, skipped", path, number)
            continue
        if isinstance(record, dict):
            yield record
        else:
            log.warning("%s line %d: not a JSON object, skipped", path, number)


def latest_by_request(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The latest record (by its `time`) per request id: feedback given twice, or a client that
    reused its X-Request-ID."""
    out: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: str(r.get("time", ""))):
        if isinstance(record.get("request_id"), str):
            out[record["request_id"]] = record
    return out


def read_log(folder: Path, kind: str) -> Iterator[dict[str, Any]]:
    """Every record of `kind` in `folder`, segment by segment; torn or bad lines skipped (warned)."""
    for path in segments(folder, kind):
        yield from _records(path, path.read_bytes())


class KnownDecisions:
    """Which request ids the log holds: this process's own decisions as they are written, and
    every worker's (and earlier runs') by reading the segments' new whole lines when asked about
    an id not seen yet."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._ids: set[str] = set()
        self._read: dict[Path, int] = {}  # bytes of whole lines read per segment
        self._lock = threading.Lock()

    def add(self, request_id: str) -> None:
        self._ids.add(request_id)

    def seen(self, request_id: str) -> bool:
        """Whether this process has met `request_id` already (memory only: for the answer path)."""
        return request_id in self._ids

    def __contains__(self, request_id: object) -> bool:
        if request_id in self._ids:
            return True
        with self._lock:
            self._catch_up()
        return request_id in self._ids

    def _catch_up(self) -> None:
        for path in segments(self.folder, DECISIONS):
            done = self._read.get(path, 0)
            try:
                if path.stat().st_size <= done:
                    continue
                with open(path, "rb") as handle:
                    handle.seek(done)
                    data = handle.read()
            except FileNotFoundError:  # removed by the operator meanwhile
                continue
            whole = data[:data.rfind(b"\n") + 1]  # a line being written is read next time
            self._read[path] = done + len(whole)
            self._ids.update(r["request_id"] for r in _records(path, whole) if isinstance(r.get("request_id"), str))


class DecisionLog:
    """The runtime's decision and feedback logs in `folder`, with their fsync thread."""

    def __init__(self, folder: Path, *, log_prompts: bool = False, segment_bytes: int = 64 * 1024 * 1024,
                 segment_seconds: float = 3600.0, fsync_seconds: float = 1.0) -> None:
        self.folder, self.log_prompts, self.fsync_seconds = folder, log_prompts, fsync_seconds
        self.decisions = Segments(folder, DECISIONS, segment_bytes, segment_seconds)
        self.feedback_log = Segments(folder, FEEDBACK, segment_bytes, segment_seconds)
        self.shadow_log = Segments(folder, SHADOW, segment_bytes, segment_seconds)
        self.known = KnownDecisions(folder)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> DecisionLog | None:
        """The log `serve.decision_log` names, or None when it is off."""
        if not settings.decision_log:
            return None
        return cls(Path(settings.decision_log), log_prompts=settings.log_prompts,
                   segment_bytes=settings.decision_segment_bytes,
                   segment_seconds=settings.decision_segment_seconds,
                   fsync_seconds=settings.decision_fsync_seconds)

    def check(self) -> None:
        """Create the folder and write (then remove) a probe file in it: run once at startup, so a
        folder the runtime cannot write stops it there with the fix named (ConfigError), instead
        of every answer failing with 503 decision_log_failed."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".probe-", dir=self.folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError(
                f"serve.decision_log: cannot write the decision log folder {os.path.abspath(self.folder)} "
                f"({exc.strerror or exc}). Give a writable folder (AMO_DECISION_LOG=/path or params.yaml "
                "serve.decision_log), or turn the log off: AMO_DECISION_LOG= (empty) or "
                "serve.decision_log: null") from None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._sync_loop, name="amo-decision-fsync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for part in (self.decisions, self.feedback_log, self.shadow_log):
            part.close()

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.fsync_seconds):
            for part in (self.decisions, self.feedback_log, self.shadow_log):
                try:
                    part.sync()
                except OSError as exc:
                    log.error("cannot fsync the %s log in %s: %s", part.kind, self.folder, exc)

    def decide(self, request_id: str, endpoint: str, bundle_id: str, prompt: str, route: dict[str, Any],
               plan: dict[str, Any] | None, latency_ms: float) -> None:
        """Log one answer (see the module docstring for what is kept)."""
        record: dict[str, Any] = {"v": FORMAT, "request_id": request_id, "time": utc_now(), "endpoint": endpoint,
                                  "bundle_id": bundle_id, "route": route, "plan": plan,
                                  "latency_ms": round(latency_ms, 3), "prompt_sha256": prompt_sha256(prompt)}
        if self.log_prompts:
            record["prompt"] = prompt
        self.decisions.append(record)
        self.known.add(request_id)

    def feedback(self, request_id: str, outcome: str, agents: list[str] | None, path: list[str] | None,
                 bundle_id: str) -> dict[str, Any]:
        """Log a verdict on the decision `request_id` (the caller checked that it is logged)."""
        record = {"v": FORMAT, "request_id": request_id, "time": utc_now(), "outcome": outcome,
                  "agents": agents, "path": path, "bundle_id": bundle_id}
        self.feedback_log.append(record)
        return record
