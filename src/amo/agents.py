"""Changing the agent catalogue: the cheap index step that makes a new agent routable without
retraining (its description embedded into the router's agent index), and the agents file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from amo import data as contracts
from amo.config import DataParams, EncoderParams
from amo.routing import AgentError, AgentIndex
from amo.validate import AGENT_ID_PATTERN


def add_agent(params: DataParams, agent: contracts.Agent, agents_file: Path | None,
              index_dir: Path | None, encoder: Any) -> dict[str, Any]:
    """Append `agent` to the agents file and/or the router's agent index (embedding only its
    description with `encoder`), so it is routable without retraining. Refuses a bad id, a
    description outside params.yaml's bounds, or an id already present, before writing anything."""
    if not re.fullmatch(AGENT_ID_PATTERN.strip("^$"), agent.id):
        raise AgentError(f"agent id {agent.id!r} must match {AGENT_ID_PATTERN}")
    if not params.min_description_chars <= len(agent.description.strip()) <= params.max_description_chars:
        raise AgentError(f"agent {agent.id!r}: description must have {params.min_description_chars}-"
                         f"{params.max_description_chars} characters, got {len(agent.description.strip())}")
    if agents_file is None and index_dir is None:
        raise AgentError("nothing to update: give an agents file, an index folder, or both")
    if agents_file is not None:
        existing = contracts.read_agents(agents_file) if agents_file.is_file() else []
        if any(a.id == agent.id for a in existing):
            raise AgentError(f"{agents_file}: agent {agent.id!r} already exists")
    index = None
    if index_dir is not None:
        index = AgentIndex.load(index_dir)  # FileNotFoundError names the missing file
        if agent.id in index.ids:
            raise AgentError(f"{index_dir}: agent {agent.id!r} is already in the index")
    result: dict[str, Any] = {"agent": agent.id}
    if index is not None and index_dir is not None:
        index = index.add([agent], encoder)
        index.save(index_dir)
        result["index"] = {"path": str(index_dir), "agents": len(index.ids)}
    if agents_file is not None:
        record = {"id": agent.id, "description": agent.description, "domain": agent.domain,
                  "tags": list(agent.tags)}
        agents_file.parent.mkdir(parents=True, exist_ok=True)
        with open(agents_file, "a", encoding="utf-8", newline="\n") as handle:
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        result["agents_file"] = str(agents_file)
    return result


def index_step_encoder(params: EncoderParams, router_dir: Path, onnx_dir: Path | None) -> Any:
    """The encoder the cheap index step (`amo agents add`) embeds a description with: export_router's
    ONNX copy of the stage encoder when its `source_identity` names that very encoder (no torch
    to import and no model to load: ~20 s of the step on this machine), else the stage encoder."""
    from amo.embeddings import encoder_identity
    from amo.encoder_tuning import served_encoder, tuned_encoder_dir
    from amo.models import Encoder
    from amo.onnx_encoder import ENCODER_META, OnnxEncoder, has_onnx_encoder

    source = served_encoder(params, tuned_encoder_dir(router_dir))
    if onnx_dir is not None and has_onnx_encoder(onnx_dir):
        meta = json.loads((onnx_dir / ENCODER_META).read_text(encoding="utf-8"))
        if meta.get("source_identity") == encoder_identity(source):
            return OnnxEncoder(onnx_dir, params.batch_size)
    return Encoder(source, params.batch_size)
