"""Stage `embed`: every text the later stages embed (agent descriptions, the routing prompts of
every split, the traces' prompts) embedded once with `encoder.path` into the embedding store
(amo.embeddings). The store persists between runs (`persist: true` in dvc.yaml), so a re-run
after new rows embeds only the new texts; it compacts itself once it holds many shards.

    amo embed --data data --out artifacts/embeddings --metrics metrics/embed.json
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from amo import data as contracts
from amo.config import EncoderParams
from amo.data import write_json
from amo.embeddings import CachedEncoder
from amo.models import Encoder, resolve_encoder

MAX_SHARDS = 16  # more than this after a run: merged into one


def texts_of(data: Path) -> list[str]:
    """The distinct texts of the data that stages embed, in a stable order."""
    texts = [a.description for a in contracts.read_agents(data / "agents.jsonl")]
    for kind in ("routing", "traces"):
        for path in sorted((data / kind).glob("*.jsonl")):
            texts += [row["prompt"] for row in contracts.iter_jsonl(path)]
    return list(dict.fromkeys(texts))


def run(params: EncoderParams, data: Path, out: Path, metrics: Path) -> dict[str, Any]:
    start = time.perf_counter()
    encoder = CachedEncoder(Encoder(resolve_encoder(params.path), params.batch_size), out, write=True)
    texts = texts_of(data)
    encoder.encode(texts)
    compacted = encoder.store.compact() if encoder.store.shards > MAX_SHARDS else 0
    result = {"texts": len(texts), "embedded": encoder.embedded, "reused": encoder.reused,
              "stored": len(encoder.store), "shards": encoder.store.shards, "compacted_shards": compacted,
              "encoder": encoder.store.identity, "seconds": round(time.perf_counter() - start, 2)}
    write_json(metrics, result)
    return result
