"""One holder at a time, across processes: an fcntl lock on a file, released by the kernel if the
holder dies (kill -9 included). The retrain flow and the bundle registry both hold one."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockBusy(RuntimeError):
    """Another holder kept the lock past the wait; the message names the lock file and the holder."""

    def __init__(self, message: str, path: Path, holder: str) -> None:
        super().__init__(message)
        self.path, self.holder = path, holder


@contextmanager
def file_lock(path: Path, timeout: float = 0.0, owner: str = "", poll: float = 0.5) -> Iterator[Path]:
    """Hold the lock on `path` (created with its folder if missing), writing who holds it into the
    file; wait up to `timeout` seconds for another holder, then raise LockBusy naming it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
                    raise LockBusy(f"lock {path} is held by {holder}; waited {timeout:g} s",
                                   path, holder) from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        record = {"pid": os.getpid(), "owner": owner,
                  "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.pwrite(fd, json.dumps(record).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
