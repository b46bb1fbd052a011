"""Progress of long loops: a log line per `every` steps (and the last) off a terminal, a bar on one."""

from __future__ import annotations

import numpy as np

from amo.progress import Progress


def test_off_a_terminal_every_nth_step_and_the_last_are_logged() -> None:
    lines: list[str] = []
    with Progress("arm t: step", 7, lines.append, every=3, terminal=False) as bar:
        for step in range(1, 8):
            bar.update(step, f"loss {1 / step:.2f}")
    assert lines == ["arm t: step 3/7 loss 0.33", "arm t: step 6/7 loss 0.17", "arm t: step 7/7 loss 0.14"]


def test_on_a_terminal_the_bar_moves_and_nothing_is_logged() -> None:
    lines: list[str] = []
    bar = Progress("router epoch", 3, lines.append, terminal=True)
    bar.update(1, "x")
    assert bar._bar is not None and bar._bar.tasks[0].completed == 1
    bar.update(2)  # stopped early (e.g. early stopping): close still ends the bar
    bar.close()
    assert bar._bar is None and lines == []


def test_embedding_many_texts_reports_each_chunk(tmp_path, caplog) -> None:
    """More than a chunk of texts are embedded chunk by chunk with a line each, same vectors."""
    from amo.embeddings import CachedEncoder

    class Fake:
        path, dim, batch_size = tmp_path, 2, 8

        def encode(self, texts: list[str]) -> np.ndarray:
            return np.array([[len(t), 1.0] for t in texts], np.float32)

    encoder = CachedEncoder(Fake(), tmp_path / "store")
    texts = [f"text {i}" for i in range(2500)]
    with caplog.at_level("INFO", logger="amo"):
        vectors = encoder.encode(texts)
    np.testing.assert_array_equal(vectors, Fake().encode(texts))
    assert [r.getMessage() for r in caplog.records if "embedding texts" in r.getMessage()] == [
        "embedding texts 1024/2500", "embedding texts 2048/2500", "embedding texts 2500/2500"]
