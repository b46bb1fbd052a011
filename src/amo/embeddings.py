"""The embedding store: every text embedded once per encoder.

Embeddings are kept by (text, encoder): a text's key is `routing.prompt_key` (8 bytes of its
sha256), an encoder's identity is a hash of its files, so a tuned or changed encoder misses
exactly its own entries. The store is a folder per encoder identity of immutable safetensors
shards (`keys` (N, 8) uint8, `vectors` (N, D) float32), each named by the hash of its keys and
written to a temporary name then renamed: a reader lists only whole shards, a torn write is never
read, two writers of the same texts write the same shard. The `embed` stage is the one writer in
the pipeline (after validation, before every stage that embeds); the stages read it through
`CachedEncoder`, which embeds what the store misses in memory. A large first embedding fans out
over a Dask cluster (`fan_out`): chunks of texts embedded by the workers, each written as its own
shard as it arrives, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amo.progress import Progress
from amo.routing import prompt_key

log = logging.getLogger("amo")
SUFFIX = ".safetensors"
KEY_BYTES = 8
_IDENTITIES: dict[tuple[str, float, int], str] = {}
_WORKER_ENCODERS: dict[Any, Any] = {}  # per worker process: each encoder loaded once


def encoder_identity(path: Path) -> str:
    """16 hex digits naming an encoder by the content of its folder (names and bytes of every
    file), cached per process by the folder's newest modification."""
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    stamp = (str(path), max((p.stat().st_mtime for p in files), default=0.0), len(files))
    if stamp not in _IDENTITIES:
        digest = hashlib.sha256()
        for p in files:
            digest.update(p.relative_to(path).as_posix().encode() + b"\0")
            with open(p, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        _IDENTITIES[stamp] = digest.hexdigest()[:16]
    return _IDENTITIES[stamp]


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """(N, 8) uint8 keys of texts."""
    return np.frombuffer(b"".join(prompt_key(t) for t in texts), np.uint8).reshape(len(texts), KEY_BYTES)


class EmbeddingStore:
    """The embeddings one encoder (by identity) made, under `root/<identity>/`."""

    def __init__(self, root: Path, identity: str) -> None:
        self.folder = Path(root) / identity
        self.identity = identity
        self._forget()

    def _forget(self) -> None:
        self._rows: dict[bytes, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        self._loaded: set[str] = set()
        self.refresh()

    def refresh(self) -> None:
        """Read shards written since the last look (a shard removed meanwhile is skipped)."""
        from safetensors.numpy import load_file

        if not self.folder.is_dir():
            return
        for shard in sorted(self.folder.glob(f"*{SUFFIX}")):
            if shard.name in self._loaded:
                continue
            try:
                tensors = load_file(str(shard))
            except FileNotFoundError:  # compacted away since the listing
                continue
            except Exception as exc:  # a damaged shard costs a re-embedding, never a wrong vector
                log.warning("embedding store: skipping unreadable shard %s (%s)", shard, exc)
                self._loaded.add(shard.name)
                continue
            keys, vectors = tensors.get("keys"), tensors.get("vectors")
            dims = {v.shape[1] for v in self._shards}
            if (keys is None or vectors is None or keys.ndim != 2 or keys.shape[1] != KEY_BYTES
                    or vectors.ndim != 2 or len(keys) != len(vectors) or (dims and vectors.shape[1] not in dims)):
                log.warning("embedding store: skipping shard %s (not (N, %d) keys with (N, D) vectors of "
                            "the store's width)", shard, KEY_BYTES)
                self._loaded.add(shard.name)
                continue
            number = len(self._shards)
            self._shards.append(vectors)
            for row, key in enumerate(keys):
                self._rows.setdefault(key.tobytes(), (number, row))
            self._loaded.add(shard.name)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def shards(self) -> int:
        return len(self._loaded)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(vectors of the found keys or None, boolean mask of found keys)."""
        where = [self._rows.get(k.tobytes()) for k in keys]
        found = np.array([w is not None for w in where], bool)
        if not found.any():
            return None, found
        return np.stack([self._shards[s][r] for s, r in (w for w in where if w is not None)]), found

    def _write_shard(self, keys: np.ndarray, vectors: np.ndarray) -> Path:
        """One shard named by the hash of its keys, written to a temporary name then renamed."""
        from safetensors.numpy import save_file

        keys, vectors = np.ascontiguousarray(keys, np.uint8), np.ascontiguousarray(vectors, np.float32)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / (hashlib.sha256(keys.tobytes()).hexdigest()[:20] + SUFFIX)
        fd, tmp = tempfile.mkstemp(prefix=".shard-", dir=self.folder)
        os.close(fd)
        try:
            save_file({"keys": keys, "vectors": vectors}, tmp, metadata={"encoder": self.identity})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> Path | None:
        """Write the (key, vector) pairs the store lacks as one new shard; its path, or None."""
        keys = np.ascontiguousarray(keys, np.uint8)
        fresh = [i for i, k in enumerate(keys) if k.tobytes() not in self._rows]
        if not fresh:
            return None
        _, first = np.unique(keys[fresh], axis=0, return_index=True)
        chosen = np.array(fresh, int)[np.sort(first)]
        path = self._write_shard(keys[chosen], vectors[chosen])
        self.refresh()
        return path


    def compact(self) -> int:
        """Merge every entry the store holds into one shard (keys sorted: the same entries give the
        same bytes), then remove the shards read before (unreadable ones too); readers that listed
        them skip what is gone. The shards merged."""
        self.refresh()
        old = [self.folder / name for name in sorted(self._loaded)]
        if len(old) < 2:
            return 0
        keys = np.frombuffer(b"".join(sorted(self._rows)), np.uint8).reshape(-1, KEY_BYTES)
        vectors, _ = self.lookup(keys)
        assert vectors is not None
        written = self._write_shard(keys, vectors)
        for path in old:
            if path != written:
                path.unlink(missing_ok=True)
        self._forget()
        return len(old)


class CachedEncoder:
    """An encoder that takes what the store holds and embeds only the rest (writing it back when
    `write` is on). Drop-in for models.Encoder: `encode(texts)`, `path`, `dim`."""

    def __init__(self, encoder: Any, root: Path, write: bool = False) -> None:
        self.encoder = encoder
        self.path = encoder.path
        self.batch_size = getattr(encoder, "batch_size", 64)
        self.store = EmbeddingStore(root, encoder_identity(encoder.path))
        self.write = write
        self.embedded = 0  # texts this process had to embed (store misses)
        self.reused = 0

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    def _encode(self, texts: list[str], chunk: int = 1024) -> np.ndarray:
        """The encoder's vectors; more than `chunk` texts go in chunks, with a progress bar on a
        terminal and a log line per chunk otherwise."""
        if len(texts) <= chunk:
            return self.encoder.encode(texts)
        parts = []
        with Progress("embedding texts", len(texts), log.info, every=1) as bar:
            for start in range(0, len(texts), chunk):
                parts.append(self.encoder.encode(texts[start:start + chunk]))
                bar.update(min(start + chunk, len(texts)))
        return np.concatenate(parts)

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return self.encoder.encode(texts)
        keys = text_keys(texts)
        found_vectors, found = self.store.lookup(keys)
        missing = np.flatnonzero(~found)
        self.reused += int(found.sum())
        if not len(missing):
            assert found_vectors is not None
            return found_vectors
        unique = list(dict.fromkeys(texts[i] for i in missing))
        start = time.perf_counter()
        fresh = self._encode(unique)
        self.embedded += len(unique)
        if len(unique) > 1000:
            log.info("embedded %d new texts in %.1fs (%d from the store)", len(unique),
                     time.perf_counter() - start, int(found.sum()))
        if self.write:
            self.store.add(text_keys(unique), fresh)
        by_text = dict(zip(unique, fresh))
        out = np.empty((len(texts), fresh.shape[1]), np.float32)
        if found_vectors is not None:
            out[found] = found_vectors
        for i in missing:
            out[i] = by_text[texts[i]]
        return out


@dataclass(frozen=True)
class EncoderSpec:
    """What a Dask worker needs to load the encoder itself (picklable, and the key of its
    per-process cache): the folder, which must hold the same files on every worker."""

    path: str
    batch_size: int = 64

    def build(self) -> Any:
        from amo.models import Encoder

        return Encoder(Path(self.path), self.batch_size)


def embed_on_worker(spec: EncoderSpec, texts: list[str]) -> tuple[str, np.ndarray]:
    """A Dask task: (the identity of the encoder the worker loaded, its (N, D) vectors of `texts`)."""
    if spec not in _WORKER_ENCODERS:
        _WORKER_ENCODERS[spec] = spec.build()
    return encoder_identity(Path(spec.path)), _WORKER_ENCODERS[spec].encode(texts)


def fan_out(cached: CachedEncoder, texts: Sequence[str], client: Any, spec: EncoderSpec,
            chunk: int = 2048) -> int:
    """Embed the texts the store lacks on the Dask cluster behind `client` (distributed.Client),
    `chunk` texts a task; each finished chunk is written to the store as one shard as it arrives,
    with a progress bar (a log line per chunk off a terminal). A worker whose encoder files hash
    to another identity is refused. The number of texts embedded."""
    from distributed import as_completed

    _, found = cached.store.lookup(text_keys(list(texts))) if texts else (None, np.zeros(0, bool))
    missing = list(dict.fromkeys(t for t, hit in zip(texts, found) if not hit))
    cached.reused += int(found.sum())
    chunks = [missing[start:start + chunk] for start in range(0, len(missing), chunk)]
    futures = client.map(embed_on_worker, [spec] * len(chunks), chunks, pure=False)
    position = {future.key: i for i, future in enumerate(futures)}
    done = 0
    with Progress("embedding texts on dask", len(missing), log.info) as bar:
        for future, (identity, vectors) in as_completed(futures, with_results=True):
            if identity != cached.store.identity:
                raise ValueError(f"a Dask worker's encoder at {spec.path} is {identity}, this store's is "
                                 f"{cached.store.identity}: the workers need the same encoder files")
            part = chunks[position[future.key]]
            cached.store.add(text_keys(part), vectors)
            done += len(part)
            bar.update(done, f"{len(chunks)} chunks")
    cached.embedded += len(missing)
    return len(missing)
