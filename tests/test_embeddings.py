"""The embedding store: each text embedded once per encoder; a changed encoder misses exactly
its own entries; torn or damaged shards are never read as vectors; concurrent writers are safe;
a Dask fan-out stores the same vectors as a serial run."""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from amo.embeddings import CachedEncoder, EmbeddingStore, EncoderSpec, encoder_identity, fan_out, text_keys


class CountingEncoder:
    """A deterministic stand-in: a text's vector is seeded by its bytes; counts what it embeds."""

    def __init__(self, path: Path, dim: int = 8) -> None:
        self.path, self.dim, self.seen = path, dim, []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.seen += texts
        rows = [np.random.default_rng(list(t.encode()) or [0]).standard_normal(self.dim) for t in texts]
        return np.array(rows, np.float32).reshape(len(texts), self.dim)


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "encoder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"layers": 2}))
    (folder / "weights.bin").write_bytes(b"\x01" * 64)
    return folder


def test_texts_are_embedded_once_and_read_back_identical(model_dir: Path, tmp_path: Path) -> None:
    """A second run embeds only the new texts; stored vectors equal the encoder's, in order."""
    store = tmp_path / "store"
    first = CachedEncoder(CountingEncoder(model_dir), store, write=True)
    a = first.encode(["red shoes", "track my order", "red shoes"])
    assert first.embedded == 2 and first.encoder.seen == ["red shoes", "track my order"]
    again = CachedEncoder(CountingEncoder(model_dir), store, write=True)
    b = again.encode(["track my order", "a gift card", "red shoes"])
    assert again.encoder.seen == ["a gift card"] and again.reused == 2
    np.testing.assert_array_equal(b[[0, 2]], a[[1, 0]])
    np.testing.assert_array_equal(b[1], CountingEncoder(model_dir).encode(["a gift card"])[0])
    reader = CachedEncoder(CountingEncoder(model_dir), store)  # read-only: misses are not written
    reader.encode(["never stored"])
    assert len(EmbeddingStore(store, encoder_identity(model_dir))) == 3


def test_a_changed_encoder_misses_its_own_entries_only(model_dir: Path, tmp_path: Path) -> None:
    """Changing the encoder's weights changes its identity: everything is embedded again, under
    its own folder, and the old encoder's entries stay."""
    store = tmp_path / "store"
    CachedEncoder(CountingEncoder(model_dir), store, write=True).encode(["red shoes"])
    old = encoder_identity(model_dir)
    (model_dir / "weights.bin").write_bytes(b"\x02" * 64)
    tuned = CachedEncoder(CountingEncoder(model_dir), store, write=True)
    tuned.encode(["red shoes"])
    assert tuned.embedded == 1 and encoder_identity(model_dir) != old
    assert sorted(p.name for p in store.iterdir()) == sorted([old, encoder_identity(model_dir)])


def test_torn_and_damaged_shards_are_never_read(model_dir: Path, tmp_path: Path) -> None:
    """A temporary file left by a killed writer is ignored; a damaged shard is skipped (its texts
    are embedded again), never read as vectors."""
    store = tmp_path / "store"
    cached = CachedEncoder(CountingEncoder(model_dir), store, write=True)
    cached.encode(["red shoes"])
    folder = store / encoder_identity(model_dir)
    (folder / ".shard-killed").write_bytes(b"\x00" * 10)
    shard = next(folder.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:40])  # damaged in place
    again = CachedEncoder(CountingEncoder(model_dir), store)
    out = again.encode(["red shoes"])
    assert again.embedded == 1
    np.testing.assert_array_equal(out[0], CountingEncoder(model_dir).encode(["red shoes"])[0])


def test_a_shard_of_the_wrong_shape_is_skipped(model_dir: Path, tmp_path: Path) -> None:
    """A shard whose vectors have another width (or keys of another size) is never read."""
    from safetensors.numpy import save_file

    store = tmp_path / "store"
    CachedEncoder(CountingEncoder(model_dir), store, write=True).encode(["red shoes"])
    folder = store / encoder_identity(model_dir)
    forged = {"keys": text_keys(["blue hat"]), "vectors": np.ones((1, 3), np.float32)}
    save_file(forged, str(folder / "zz-forged.safetensors"))
    save_file({"keys": np.zeros((1, 4), np.uint8), "vectors": np.ones((1, 8), np.float32)},
              str(folder / "zz-short-keys.safetensors"))
    again = CachedEncoder(CountingEncoder(model_dir), store)
    out = again.encode(["blue hat", "red shoes"])
    assert again.embedded == 1 and out.shape == (2, 8) and len(again.store) == 1


def _write(args: tuple[Path, Path, list[str]]) -> int:
    model_dir, store, texts = args
    return CachedEncoder(CountingEncoder(model_dir), store, write=True).encode(texts).shape[0]


def test_concurrent_writers_leave_a_whole_store_and_compaction_keeps_every_entry(model_dir: Path,
                                                                                tmp_path: Path) -> None:
    """Four processes writing overlapping texts at once leave whole shards holding every text;
    compacting merges them into one shard with the same vectors."""
    store = tmp_path / "store"
    jobs = [(model_dir, store, [f"prompt {i}" for i in range(j * 50, j * 50 + 100)]) for j in range(4)]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        assert pool.map(_write, jobs) == [100] * 4
    texts = [f"prompt {i}" for i in range(250)]
    keys = text_keys(texts)
    whole = EmbeddingStore(store, encoder_identity(model_dir))
    vectors, found = whole.lookup(keys)
    assert found.all() and not list((store / whole.identity).glob(".shard-*"))
    shards = whole.shards
    assert shards >= 2 and whole.compact() == shards
    merged = EmbeddingStore(store, whole.identity)
    assert merged.shards == 1
    np.testing.assert_array_equal(merged.lookup(keys)[0], vectors)
    np.testing.assert_array_equal(vectors, CountingEncoder(model_dir).encode(texts))


@dataclass(frozen=True)
class CountingSpec(EncoderSpec):
    """The stand-in encoder, built by each Dask worker from its folder."""

    def build(self) -> CountingEncoder:
        return CountingEncoder(Path(self.path))


def test_dask_fan_out_stores_the_same_vectors_as_serial_and_hits_them_next_time(model_dir: Path,
                                                                                tmp_path: Path) -> None:
    """Texts embedded on Dask workers, a shard per chunk, read back equal to a serial embedding;
    a second run finds every text in the store and embeds none."""
    from distributed import Client

    texts = [f"prompt number {i}" for i in range(23)] + ["prompt number 3"]
    serial = CachedEncoder(CountingEncoder(model_dir), tmp_path / "serial", write=True).encode(texts)
    store = tmp_path / "fanned"
    with Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        cached = CachedEncoder(CountingEncoder(model_dir), store, write=True)
        assert fan_out(cached, texts, client, CountingSpec(str(model_dir)), chunk=5) == 23
        assert cached.store.shards == 5 and cached.encoder.seen == []  # the workers embedded, not this process
        again = CachedEncoder(CountingEncoder(model_dir), store, write=True)
        assert fan_out(again, texts, client, CountingSpec(str(model_dir)), chunk=5) == 0
    assert (again.embedded, again.reused) == (0, 24)
    reader = CachedEncoder(CountingEncoder(model_dir), store)
    np.testing.assert_array_equal(reader.encode(texts), serial)
    assert (reader.embedded, reader.reused) == (0, 24)
