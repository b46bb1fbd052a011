"""The bundle registry: bundles by id, an atomically switched `current` pointer, a history.

    <registry>/
      bundles/<bundle_id>/   verified copies of promoted bundles
      current.json           {"bundle_id": ...}: the one pointer the runtime follows
      history.jsonl          append-only: every promotion, rejection and rollback, with reasons

The registry is a local directory (`params.yaml: registry.path`, `file://...` too) or any fsspec
URL (`s3://bucket/amo`, `gs://...` with s3fs/gcsfs installed). Locally, a bundle is copied to a
hidden `.partial` folder, verified and renamed; `current.json` is written to a temp file, fsynced
and renamed, so a crash leaves the old pointer or the new one, never a torn one. Object stores have
no rename: a bundle's files are uploaded under `bundles/<id>/`, read back and verified before
`current.json` names it, and `current.json` is replaced by one PUT, which readers see whole, old or
new. History on an object store is rewritten whole on each event: run one promoter at a time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amo.bundle import MANIFEST, BundleError, check_bundle_id, verify_bundle
from amo.config import GateParams, RegistryParams
from amo.locks import file_lock

log = logging.getLogger("amo.registry")

CURRENT = "current.json"
CHALLENGER = "challenger.json"  # a bundle the runtime scores in shadow (amo.shadow), never served
HISTORY = "history.jsonl"
LOCK = "registry.lock"  # held by promote, rollback and gc: one at a time per local registry

Checkpoint = Callable[[str], None]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _no_checkpoint(step: str) -> None:
    """Default hook between promotion steps; crash tests replace it to stop the process there."""


def atomic_write(path: Path, text: str, checkpoint: Checkpoint = _no_checkpoint) -> None:
    """Readers see the old file or the new one, never a torn one, even across a crash."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        checkpoint(f"{path.name}: temp file written")
        os.fsync(handle.fileno())
    checkpoint(f"{path.name}: temp file fsynced")
    os.replace(tmp, path)
    checkpoint(f"{path.name}: renamed")
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def metric(metrics: dict[str, Any], dotted: str) -> float | None:
    value: Any = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) else None


Assess = Callable[[Path], dict[str, Any]]


@dataclass
class Decision:
    bundle_id: str
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    champion: str | None = None
    # The metrics the gate compared: {"candidate": ..., "champion": ..., "same_data": bool}
    measured: dict[str, Any] = field(default_factory=dict)
    unchanged: bool = False  # the candidate already was the current bundle: nothing was promoted

    def __str__(self) -> str:
        if self.unchanged:
            current = ("already the current bundle" if self.champion == self.bundle_id
                       else f"the same as {self.champion}, the current bundle")
            lines = [f"UNCHANGED {self.bundle_id}: {current} (nothing promoted)"]
        else:
            verdict = "PROMOTED" if self.accepted else "REJECTED"
            lines = [f"{verdict} {self.bundle_id} (champion: {self.champion or 'none'})"]
        return "\n".join(lines + [f"  - {reason}" for reason in self.reasons])


def arm_metric(scores: dict[str, Any]) -> str:
    """The task metric an arm is judged by: named by the evaluate stage, or the only one scored."""
    if isinstance(scores.get("metric"), str):
        return scores["metric"]
    names = [k for k in (scores.get("arm") or {}) if k != "examples"]
    return names[0] if len(names) == 1 else "?"


def gate(candidate: dict[str, Any], champion: dict[str, Any] | None, params: GateParams) -> list[tuple[bool, str]]:
    """(passed, reason) per check: floors, then no regression beyond tolerance vs the champion;
    then every arm against the base model (by `arm_min_gain` at least) and the champion's arm."""
    checks = []
    for name, floor in sorted(params.floors.items()):
        value = metric(candidate, name)
        if value is None:
            checks.append((False, f"{name}: missing from the candidate's metrics"))
            continue
        checks.append((value >= floor, f"{name} = {value:.4f} {'>=' if value >= floor else '<'} floor {floor}"))
        best = metric(champion, name) if champion is not None else None
        if best is not None:
            checks.append(_no_regression(name, value, best, candidate, champion or {}, params))
    for arm, scores in sorted((candidate.get("arms") or {}).items()):
        name = arm_metric(scores)
        value, base = metric(scores, f"arm.{name}"), metric(scores, f"base.{name}")
        if value is None or base is None:
            checks.append((False, f"arms.{arm}: no arm and base scores of its task metric in the candidate's metrics"))
            continue
        ok = value >= base + params.arm_min_gain
        gain = "gains" if ok else "gains less than"
        checks.append((ok, f"arms.{arm} = {value:.4f} vs base model {base:.4f} ({gain} {params.arm_min_gain})"))
        best = metric(champion, f"arms.{arm}.arm.{name}") if champion is not None else None
        if best is not None:
            ok = value >= best - params.tolerance
            within = "within" if ok else "beyond"
            checks.append((ok, f"arms.{arm} = {value:.4f} vs champion {best:.4f} ({within} tolerance {params.tolerance})"))
    return checks


def sign_test(candidate: list[float], champion: list[float]) -> tuple[int, int, float]:
    """Rows where the candidate is worse and better than the champion on the same test rows, and
    the one-sided p-value of that many worse rows if neither bundle were better (sign test)."""
    worse = sum(c < h for c, h in zip(candidate, champion))
    better = sum(c > h for c, h in zip(candidate, champion))
    n = worse + better
    p = sum(math.comb(n, i) for i in range(worse, n + 1)) / 2**n if n else 1.0
    return worse, better, p


def _rows(metrics: dict[str, Any], dotted: str) -> list[float] | None:
    section, _, name = dotted.partition(".")
    rows = ((metrics.get("rows") or {}).get(section) or {}).get(name)
    return rows if isinstance(rows, list) else None


def _no_regression(name: str, value: float, best: float, candidate: dict[str, Any], champion: dict[str, Any],
                   params: GateParams) -> tuple[bool, str]:
    """A drop beyond the tolerance fails, unless both bundles were scored row by row on the same
    rows and the paired sign test cannot tell the drop from noise (p >= gate.alpha): a test split
    with 13 out-of-scope prompts moves 0.077 per prompt."""
    said = f"{name} = {value:.4f} vs champion {best:.4f}"
    if value >= best - params.tolerance:
        return True, f"{said} (within tolerance {params.tolerance})"
    ours, theirs = _rows(candidate, name), _rows(champion, name)
    if ours is None or theirs is None or len(ours) != len(theirs):
        return False, f"{said} (beyond tolerance {params.tolerance})"
    worse, better, p = sign_test(ours, theirs)
    noise = p >= params.alpha
    return noise, (f"{said} (beyond tolerance {params.tolerance}; on the same {len(ours)} rows {worse} worse, "
                   f"{better} better: paired sign test p = {p:.3f} {'>=' if noise else '<'} alpha {params.alpha}, "
                   f"{'not a significant regression' if noise else 'a significant regression'})")


@dataclass
class Cleanup:
    """What `Registry.gc` removed (or would remove) and kept, as paths and ids."""

    removed: list[str]
    kept: list[str]


class Registry:
    """Bundles by id, `current.json` and `history.jsonl` under a local folder or fsspec URL."""

    def __init__(self, root: str | Path, cache_dir: Path | None = None,
                 checkpoint: Checkpoint = _no_checkpoint, lock_timeout: float = 600.0,
                 verify_key: Path | None = None) -> None:
        from fsspec.core import url_to_fs
        from fsspec.implementations.local import LocalFileSystem

        self.url = str(root)
        self.fs, base = url_to_fs(self.url)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = Path(base) if self.local else Path(self.url)
        self._base = base.rstrip("/")
        self.bundles = self.root / "bundles"
        self.cache_dir = cache_dir
        self.checkpoint = checkpoint
        self.lock_timeout = lock_timeout
        self.verify_key = verify_key  # bundles must be signed with its private key (amo.signing)

    @contextmanager
    def _locked(self, action: str) -> Iterator[None]:
        """Hold the registry's lock for `action` (locally; an object store has none: run one
        promoter at a time there). A holder that dies releases it."""
        if not self.local:
            yield
            return
        with file_lock(self.root / LOCK, self.lock_timeout, owner=f"amo {action}", poll=0.05):
            yield

    @classmethod
    def from_params(cls, params: RegistryParams, repo: Path = Path(".")) -> Registry:
        """The registry params.yaml names: a folder relative to `repo`, or an fsspec URL."""
        where = params.path if "://" in params.path else repo / params.path
        return cls(where, cache_dir=repo / params.cache_dir,
                   verify_key=repo / params.verify_key if params.verify_key else None)

    # -- paths and small files ----------------------------------------------------------------
    def _key(self, *parts: str) -> str:
        """The fsspec path of a registry entry; a part that is not one plain name is refused."""
        for part in parts:
            if part in ("", ".", "..") or "/" in part or "\\" in part:
                raise BundleError(f"registry {self.url}: {part!r} is not a plain name inside the registry")
        return "/".join([self._base, *parts])

    def _inside(self, path: Path) -> Path:
        """`path` when it resolves (symlinks followed) inside the local registry, else refused."""
        resolved, root = path.resolve(), self.root.resolve()
        if not resolved.is_relative_to(root):
            raise BundleError(f"registry {self.url}: {path} resolves to {resolved}, outside the registry")
        return path

    def _bundle_dir(self, bundle_id: str, where: str = "") -> Path:
        """The local folder of bundle `bundle_id`: a checked id, a path inside the registry."""
        check_bundle_id(bundle_id, where or f"registry {self.url}")
        return self._inside(self.bundles / bundle_id)

    def _read(self, *parts: str) -> str | None:
        key = self._key(*parts)
        if not self.fs.exists(key):
            return None
        return self.fs.cat_file(key).decode("utf-8")

    def pointer(self) -> str | None:
        """The raw text of `current.json` (changes on every promotion and rollback)."""
        return self._read(CURRENT)

    def challenger_pointer(self) -> str | None:
        """The raw text of `challenger.json` (None: no bundle in shadow)."""
        return self._read(CHALLENGER)

    def challenger_id(self) -> str | None:
        text = self.challenger_pointer()
        return None if text is None else self.pointer_id(text, CHALLENGER)

    def pointer_id(self, text: str, name: str = CURRENT) -> str:
        """The bundle id a `current.json` (or `name`) text names; BundleError naming the file if it names none."""
        where = self._where(name)
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise BundleError(f"{where}: unreadable ({exc})") from None
        if not isinstance(value, dict) or "bundle_id" not in value:
            raise BundleError(f"{where}: unreadable (no bundle_id in {text[:80]!r})")
        return check_bundle_id(value["bundle_id"], where)

    def read_current(self) -> tuple[str | None, str | None]:
        """(the current bundle id, None); (None, why) when `current.json` is unreadable or names
        no valid id; (None, None) when nothing was promoted yet."""
        text = self.pointer()
        if text is None:
            return None, None
        try:
            return self.pointer_id(text), None
        except BundleError as exc:
            return None, str(exc)

    def current_id(self) -> str | None:
        """The current bundle id (None before the first promotion); a corrupt `current.json` is a
        BundleError that names the file and the repair."""
        bundle_id, problem = self.read_current()
        if problem is not None:
            raise BundleError(f"{problem}; repair it with `amo rollback` or `amo rollback --to BUNDLE_ID` "
                              "(`amo bundles list` shows the bundles)")
        return bundle_id

    def _where(self, name: str) -> str:
        """A registry file, named for error messages."""
        return f"{self.url.rstrip('/')}/{name}"

    def bundle_path(self, bundle_id: str) -> Path:
        """A local folder holding bundle `bundle_id`: the registry's own copy when local, else a
        fresh download into the cache (verify it before use)."""
        if self.local:
            return self._bundle_dir(bundle_id)
        check_bundle_id(bundle_id, f"registry {self.url}")
        if not self.fs.exists(self._key("bundles", bundle_id, MANIFEST)):
            raise BundleError(f"registry {self.url}: no bundle {bundle_id}")
        cache = self.cache_dir or Path(tempfile.gettempdir()) / "amo-registry-cache"
        target = cache / bundle_id
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for remote in self.fs.find(self._key("bundles", bundle_id)):
            relative = remote[len(self._key("bundles", bundle_id)) + 1:]
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(target / relative))
        return target

    def current_path(self) -> Path:
        bundle_id = self.current_id()
        if bundle_id is None:
            raise BundleError(f"registry {self.url}: nothing promoted yet (run `amo promote`)")
        return self.bundle_path(bundle_id)

    def verify(self, bundle_id: str, signed: bool = True) -> dict[str, Any]:
        """Every file of a registry bundle against its manifest, filed under its own id, and its
        signature when the registry has a verify key (unless `signed` is False)."""
        path = self.bundle_path(bundle_id)
        manifest = verify_bundle(path)
        if manifest["bundle_id"] != bundle_id:
            raise BundleError(f"registry {self.url}: bundles/{bundle_id} holds bundle {manifest['bundle_id']}")
        if signed:
            self.check_signed(path)
        return manifest

    def check_signed(self, bundle: Path) -> None:
        """With a verify key, BundleError unless `bundle` is signed with its private key."""
        if self.verify_key is not None:
            from amo.signing import check_signature

            check_signature(bundle, self.verify_key)

    def history(self) -> list[dict[str, Any]]:
        """Every readable event of `history.jsonl`, oldest first (unreadable lines left out)."""
        return self.read_history()[0]

    def read_history(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The readable events, and a note per line that is not one (a write cut short)."""
        events, skipped = [], []
        for number, line in enumerate((self._read(HISTORY) or "").splitlines(), 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict) and isinstance(event.get("action"), str):
                events.append(event)
            else:
                skipped.append(f"{HISTORY} line {number}: unreadable, left out ({line[:60]!r})")
        return events, skipped

    def _record(self, event: dict[str, Any]) -> None:
        """Append one event to the history, on a line of its own even after a torn last line."""
        line = json.dumps({"time": _now(), **event}, sort_keys=True) + "\n"
        if self.local:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.root / HISTORY, "a+b") as handle:
                if handle.tell() > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":
                        line = "\n" + line
                handle.write(line.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
        else:
            text = self._read(HISTORY) or ""
            if text and not text.endswith("\n"):
                text += "\n"
            self.fs.pipe_file(self._key(HISTORY), (text + line).encode())
        self.checkpoint("history recorded")

    def _point_to(self, bundle_id: str, name: str = CURRENT) -> None:
        text = json.dumps({"bundle_id": bundle_id, "since": _now()}) + "\n"
        if self.local:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(self.root / name, text, self.checkpoint)
        else:
            self.fs.pipe_file(self._key(name), text.encode())
            self.checkpoint(f"{name}: written")

    def shadow(self, candidate: Path) -> str:
        """Verify a candidate, copy it in and point `challenger.json` at it (the runtime scores it
        in shadow beside the champion; `current` is untouched); its bundle id."""
        manifest = verify_bundle(candidate)
        self.check_signed(candidate)
        bundle_id = manifest["bundle_id"]
        with self._locked(f"shadow {bundle_id}"):
            note = self._copy_in(Path(candidate), bundle_id)
            self._point_to(bundle_id, CHALLENGER)
            self._record({"action": "shadow", "bundle_id": bundle_id, "previous": self.current_id(),
                          "reasons": [f"{bundle_id} scored in shadow beside the champion"] + ([note] if note else [])})
        return bundle_id

    def _clear_challenger(self, bundle_id: str) -> None:
        """No bundle in shadow any more, when `bundle_id` was it (it has just been promoted)."""
        try:
            challenger = self.challenger_id()
        except BundleError:
            challenger = bundle_id  # unreadable: clear it too
        if challenger == bundle_id and self.fs.exists(self._key(CHALLENGER)):
            self.fs.rm(self._key(CHALLENGER))

    # -- copying a bundle in ------------------------------------------------------------------
    def _copy_in(self, candidate: Path, bundle_id: str) -> str | None:
        """Copy a verified candidate to bundles/<id>, whole or not at all (as `current` sees it).
        A copy already there is re-verified: kept when whole, else replaced from the candidate,
        and the returned note says so (None when nothing needed saying)."""
        note = None
        if self.local:
            target = self._bundle_dir(bundle_id)
            stored = target.exists()
        else:
            stored = self.fs.exists(self._key("bundles", bundle_id))
        if stored:
            try:
                self.verify(bundle_id)
                return None
            except BundleError as exc:
                note = f"the stored copy failed verification and was replaced from the verified candidate ({exc})"
                log.warning("registry %s: %s", self.url, note)
        if self.local:
            self._copy_in_local(candidate, bundle_id)
            return note
        # Object store: manifest last, so a bundle without a manifest is known to be partial.
        if stored:
            self.fs.rm(self._key("bundles", bundle_id), recursive=True)
        files = sorted(p for p in candidate.rglob("*") if p.is_file() and p.name != MANIFEST)
        for path in [*files, candidate / MANIFEST]:
            self.checkpoint(f"upload {path.relative_to(candidate)}")
            self.fs.put_file(str(path), self._key("bundles", bundle_id, *path.relative_to(candidate).parts))
        self.verify(bundle_id)
        self.checkpoint("upload verified")
        return note

    def _copy_in_local(self, candidate: Path, bundle_id: str) -> None:
        """Copy to a hidden `.partial` folder, verify, rename into place (a corrupt copy already
        there is renamed aside first, then removed)."""
        target = self._bundle_dir(bundle_id)
        partial = self._inside(self.bundles / f".{bundle_id}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        self.bundles.mkdir(parents=True, exist_ok=True)

        def copy(source: str, destination: str) -> str:
            self.checkpoint(f"copy {Path(source).relative_to(candidate)}")
            return shutil.copy2(source, destination)

        shutil.copytree(candidate, partial, copy_function=copy)
        verify_bundle(partial)
        self.checkpoint("copy verified")
        if target.exists():
            corrupt = self._inside(self.bundles / f".{bundle_id}.corrupt")
            shutil.rmtree(corrupt, ignore_errors=True)
            os.replace(target, corrupt)
            os.replace(partial, target)
            shutil.rmtree(corrupt)
        else:
            os.replace(partial, target)
        self.checkpoint("bundle renamed into place")

    # -- operations ---------------------------------------------------------------------------
    def promote(self, candidate: Path, params: GateParams, force: bool = False,
                assess: Assess | None = None,
                extra_checks: Callable[[str], list[tuple[bool, str]]] | None = None) -> Decision:
        """Verify, gate against floors and the champion, copy in, then switch `current`.

        With `assess` (a bundle folder -> its metrics on today's test data), candidate and
        champion are both scored by it, on the same data; without it, the gate compares the
        metrics each manifest carries, and the reasons say so. Promotions take the registry's
        lock and read the champion inside it; promoting the current bundle changes nothing.
        `extra_checks` (the bundle id -> more (passed, reason) checks) joins the gate when there is
        a champion: the shadow check (amo.shadow)."""
        manifest = verify_bundle(candidate)
        self.check_signed(candidate)
        self.checkpoint("candidate verified")
        bundle_id = manifest["bundle_id"]
        with self._locked(f"promote {bundle_id}"):
            champion_id = self.current_id()
            if champion_id == bundle_id:
                return self._unchanged(Path(candidate), bundle_id)
            if champion_id is not None and self._same_contents(manifest, champion_id):
                return Decision(bundle_id, True, [
                    f"{bundle_id} has the same files, models and data version as the current bundle {champion_id} "
                    "(a re-run on unchanged inputs): no gate, no switch, no history entry"], champion_id, unchanged=True)
            return self._gate_and_switch(Path(candidate), manifest, champion_id, params, force, assess,
                                         extra_checks)

    def _same_contents(self, manifest: dict[str, Any], champion_id: str) -> bool:
        """The candidate holds the champion's exact files, models and data version: only its build
        time (and so its id) differs. An unreadable champion manifest is not the same."""
        try:
            champion = json.loads(self._read("bundles", champion_id, MANIFEST) or "null")
        except ValueError:
            return False
        keys = ("files", "models", "data_hash")
        return isinstance(champion, dict) and all(champion.get(k) == manifest.get(k) for k in keys)

    def _unchanged(self, candidate: Path, bundle_id: str) -> Decision:
        """The candidate is the current bundle: nothing to promote (its stored copy is re-verified,
        and replaced from the verified candidate if corrupt, which the history records)."""
        reasons = [f"{bundle_id} is already the current bundle: no gate, no switch, no history entry"]
        note = self._copy_in(candidate, bundle_id)
        if note is not None:
            reasons = [f"{bundle_id} is already the current bundle; {note}"]
            self._record({"action": "repair", "bundle_id": bundle_id, "previous": bundle_id, "reasons": reasons})
        return Decision(bundle_id, True, reasons, bundle_id, unchanged=True)

    def _gate_and_switch(self, candidate: Path, manifest: dict[str, Any], champion_id: str | None,
                         params: GateParams, force: bool, assess: Assess | None,
                         extra_checks: Callable[[str], list[tuple[bool, str]]] | None = None) -> Decision:
        """Gate the verified candidate against `champion_id`; copy in and switch if it passes."""
        bundle_id = manifest["bundle_id"]
        # The champion's files, not its signature: it may predate the verify key, and is only read.
        champion_manifest = self.verify(champion_id, signed=False) if champion_id else None
        if assess is not None:
            measured = assess(candidate)
            basis = "candidate and champion scored on the same, current test data"
            try:
                champion = assess(self.bundle_path(champion_id)) if champion_id else None
            except (BundleError, OSError, KeyError, ValueError) as exc:  # e.g. built by an older amo
                champion = champion_manifest["metrics"] if champion_manifest else None
                basis = (f"candidate scored on the current test data; champion {champion_id} cannot be "
                         f"re-scored by this amo ({type(exc).__name__}: {exc}), so its stored metrics are used")
        else:
            measured = manifest["metrics"]
            champion = champion_manifest["metrics"] if champion_manifest else None
            basis = "metrics stored in each manifest (no test data given: not re-measured)"
        checks = gate(measured, champion, params) + (extra_checks(bundle_id) if extra_checks and champion_id else [])
        accepted = force or all(ok for ok, _ in checks)
        reasons = [f"basis: {basis}", *(("ok: " if ok else "FAILED: ") + why for ok, why in checks)]
        if force:
            reasons.append("forced: gate overridden by --force")
        decision = Decision(bundle_id, accepted, reasons, champion_id,
                            {"candidate": measured, "champion": champion, "same_data": assess is not None})
        self.checkpoint("gate decided")
        if accepted:
            note = self._copy_in(candidate, bundle_id)
            if note is not None:
                reasons.append(f"note: {note}")
            self._point_to(bundle_id)
            self._clear_challenger(bundle_id)
        self._record({"action": "promote" if accepted else "reject", "bundle_id": bundle_id,
                      "previous": champion_id, "reasons": reasons})
        return decision

    def rollback(self, to: str | None = None, say: Callable[[str], None] = log.warning) -> str:
        """Point `current` at `to`, or at the latest bundle before the current one that verifies.
        Works from an unreadable `current.json` (the bundle history last switched to is taken as
        current) and a torn history; `say` gets a note for everything skipped or assumed."""
        with self._locked("rollback"):
            current, switched = self._current_and_switched(say)
            if to is None:
                to = self._earlier(switched, current, say)
            self.verify(to)
            self._point_to(to)
            self._record({"action": "rollback", "bundle_id": to, "previous": current, "reasons": []})
            return to

    def _current_and_switched(self, say: Callable[[str], None]) -> tuple[str | None, list[Any]]:
        """The current bundle id, and the bundle ids history switched `current` to, oldest first.
        With an unreadable `current.json`, the bundle history last switched to is taken as
        current; `say` gets that, and every unreadable history line."""
        current, problem = self.read_current()
        events, skipped = self.read_history()
        for note in skipped:
            say(f"skipped {note}")
        switched = [e.get("bundle_id") for e in events if e["action"] in ("promote", "rollback", "repair")]
        if problem is not None:
            current = switched[-1] if switched else None
            say(f"{problem}; taking {current or 'nothing'} (the bundle history last switched to) as current")
        return current, switched

    def _earlier(self, switched: list[Any], current: str | None, say: Callable[[str], None]) -> str:
        """The latest bundle history switched to, other than `current`, that verifies."""
        for bundle_id in dict.fromkeys(reversed(switched)):
            if bundle_id == current or not isinstance(bundle_id, str):
                continue
            try:
                self.verify(bundle_id)
                return bundle_id
            except BundleError as exc:
                say(f"skipped {bundle_id}: {exc}")
        raise BundleError(f"registry {self.url}: no earlier bundle to roll back to")

    def gc(self, keep: int, dry_run: bool = False, say: Callable[[str], None] = log.warning) -> Cleanup:
        """Remove stored bundles other than the current one and the `keep` that history switched
        to last, and the leftovers of cut-short promotions (`.partial` and `.corrupt` folders,
        `.tmp` files; on an object store, bundle folders without a manifest). History is kept
        whole. Paths are relative to the registry."""
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (bundles kept besides the current one), got {keep}")
        with self._locked("gc"):
            current, switched = self._current_and_switched(say)
            recent = [b for b in dict.fromkeys(reversed(switched)) if isinstance(b, str)][:keep]
            stored = self._stored()
            try:
                challenger = self.challenger_id()
            except BundleError:
                challenger = None
            kept = sorted({b for b in (current, challenger, *recent) if b in stored})
            doomed = sorted([f"bundles/{name}" for name in stored if name not in kept] + self._leftovers())
            for path in [] if dry_run else doomed:
                self._remove(path)
            return Cleanup(doomed, kept)

    def _remove(self, path: str) -> None:
        """Delete a file or folder of the registry (relative path), never anything outside it."""
        if not self.local:
            self.fs.rm(self._key(*path.split("/")), recursive=True)
            return
        target = self._inside(self.root / path)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()

    def _folders(self) -> list[str]:
        """The names under `bundles/`, hidden ones included."""
        key = self._key("bundles")
        return sorted(Path(p).name for p in self.fs.ls(key, detail=False)) if self.fs.exists(key) else []

    def _stored(self) -> list[str]:
        """The bundles stored whole (a manifest present), by folder name."""
        return [n for n in self._folders()
                if not n.startswith(".") and self.fs.exists(self._key("bundles", n, MANIFEST))]

    def _leftovers(self) -> list[str]:
        """What cut-short promotions left behind, relative to the registry."""
        if not self.local:
            return [f"bundles/{n}" for n in self._folders() if not self.fs.exists(self._key("bundles", n, MANIFEST))]
        found = [p for p in self.bundles.glob(".*") if p.name.endswith((".partial", ".corrupt", ".tmp"))]
        found += list(self.root.glob(".*.tmp"))
        return sorted(str(p.relative_to(self.root)) for p in found)

    def list(self) -> list[dict[str, Any]]:
        """A row per stored bundle (id, created, current, metrics; `problem` when its manifest is
        unreadable); none is current while `current.json` is unreadable."""
        current = self.read_current()[0]
        rows = []
        for name in [n for n in self._folders() if not n.startswith(".")]:
            text = self._read("bundles", name, MANIFEST)
            if text is None:  # an upload cut short: never current, not listed
                continue
            try:
                manifest = json.loads(text)
                rows.append({"bundle_id": manifest["bundle_id"], "created": manifest["created"],
                             "current": manifest["bundle_id"] == current, "metrics": manifest["metrics"]})
            except (ValueError, KeyError, TypeError) as exc:
                rows.append({"bundle_id": name, "created": "?", "current": name == current, "metrics": {},
                             "problem": f"unreadable manifest ({type(exc).__name__}: {exc})"})
        return rows
