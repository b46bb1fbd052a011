"""Stage `embed`: every text the later stages embed (agent descriptions, the routing prompts of
every split, the traces' prompts) embedded once with `encoder.path` into the embedding store
(amo.embeddings). The store persists between runs (`persist: true` in dvc.yaml), so a re-run
after new rows embeds only the new texts; it compacts itself once it holds many shards. With a
Dask scheduler (`--dask-address`, env AMO_DASK_ADDRESS, `orchestration.dask_address`: the cluster
arm training uses) a large first embedding fans out over its workers.

    amo embed --data data --out artifacts/embeddings --metrics metrics/embed.json
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from amo import data as contracts
from amo.config import EncoderParams
from amo.data import write_json
from amo.embeddings import CachedEncoder, EncoderSpec, fan_out
from amo.models import Encoder, resolve_encoder

MAX_SHARDS = 16  # more than this after a run: merged into one


def texts_of(data: Path) -> list[str]:
    """The distinct texts of the data that stages embed, in a stable order."""
    texts = [a.description for a in contracts.read_agents(data / "agents.jsonl")]
    for kind in ("routing", "traces"):
        for path in sorted((data / kind).glob("*.jsonl")):
            texts += [row["prompt"] for row in contracts.iter_jsonl(path)]
    return list(dict.fromkeys(texts))


def run(params: EncoderParams, data: Path, out: Path, metrics: Path, dask_address: str | None = None
        ) -> dict[str, Any]:
    """dask_address: a Dask scheduler (tcp://host:8786) whose workers embed what the store lacks
    (amo.embeddings.fan_out; the same vectors as here); None: this process embeds them."""
    start = time.perf_counter()
    path = resolve_encoder(params.path)
    encoder = CachedEncoder(Encoder(path, params.batch_size), out, write=True)
    texts = texts_of(data)
    if dask_address:
        from distributed import Client

        with Client(dask_address) as client:
            fan_out(encoder, texts, client, EncoderSpec(str(path), params.batch_size))
    else:
        encoder.encode(texts)
    compacted = encoder.store.compact() if encoder.store.shards > MAX_SHARDS else 0
    result = {"texts": len(texts), "embedded": encoder.embedded, "reused": encoder.reused,
              "stored": len(encoder.store), "shards": encoder.store.shards, "compacted_shards": compacted,
              "encoder": encoder.store.identity, "seconds": round(time.perf_counter() - start, 2)}
    write_json(metrics, result)
    return result
