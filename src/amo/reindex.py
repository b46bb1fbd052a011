"""The cheap path to the runtime: a new agent (or a changed description) reaches the served
copilot without retraining the scorer or the planner.

`publish_index` takes the champion bundle, rebuilds its agent index from the data's agents file
(the champion's embeddings kept where a description is unchanged, only new or changed
descriptions embedded, with the bundle's own encoder), re-measures the result on the current test
data, and promotes it through the same gate as a full retrain. The served runtime picks the new
`current` up at its next poll. The full retrain follows on the schedule.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from amo import data as contracts
from amo.bundle import (
    ARMS_MEASURED_IN,
    MANIFEST,
    SIGNATURE,
    BundleError,
    file_hashes,
    new_bundle_id,
    now,
    read_manifest,
    verify_bundle,
    write_manifest,
)
from amo.routing import AgentIndex, Classifier, index_step_classifier, prompt_key


class NothingToPublish(BundleError):
    """The agents file already matches the champion's index."""


def refresh_index(champion: AgentIndex, agents: list[contracts.Agent], rows: list[contracts.RoutingExample],
                  encoder: Any) -> tuple[AgentIndex, dict[str, Any]]:
    """The index for `agents` (in their order) with `rows` (the training split) as examples:
    the champion's embeddings reused for unchanged descriptions and known prompts, only new
    or changed texts embedded with `encoder`. Also what changed."""
    known = {a.id: (a, row) for a, row in zip(champion.agents, champion.embeddings)}
    fresh = [a for a in agents if a.id not in known or known[a.id][0].description != a.description]
    embedded = dict(zip([a.id for a in fresh], encoder.encode([a.description for a in fresh]))) if fresh else {}
    descriptions = [embedded[a.id] if a.id in embedded else known[a.id][1] for a in agents]
    base = AgentIndex(list(agents), np.array(descriptions, np.float32).reshape(len(agents), -1))
    seen = champion.known_prompts()
    unseen = list(dict.fromkeys(r.prompt for r in rows if prompt_key(r.prompt) not in seen))
    new_vectors = dict(zip(unseen, encoder.encode(unseen))) if unseen else {}
    vectors = np.array([seen.get(prompt_key(r.prompt), new_vectors.get(r.prompt)) for r in rows], np.float32)
    index = base.with_examples(rows, embeddings=vectors.reshape(len(rows), -1))
    changes = {"added": [a.id for a in fresh if a.id not in known],
               "redescribed": [a.id for a in fresh if a.id in known],
               "removed": sorted(set(known) - {a.id for a in agents}),
               "examples": {"before": len(champion.examples), "after": len(index.examples),
                            "prompts_embedded": len(unseen)}}
    return index, changes


def _same(a: AgentIndex, b: AgentIndex) -> bool:
    def bank(index: AgentIndex) -> list[tuple[bytes, str]]:
        return sorted((k.tobytes(), index.ids[i]) for k, i in zip(index.example_keys, index.example_agents))

    return ([(x.id, x.description) for x in a.agents] == [(x.id, x.description) for x in b.agents]
            and bank(a) == bank(b))


def _carried_arm_scores(parent: dict[str, Any], files: dict[str, str]) -> dict[str, Any]:
    """The parent's arm scores, when every arm file hashes as in the parent (the arms are the same
    weights, so their scores on their task test sets are the same): the gate then checks them
    against the base model and the champion as for a full retrain. Otherwise none, and the gate
    refuses the arms it cannot judge."""
    def arm_files(hashes: dict[str, str]) -> dict[str, str]:
        return {name: digest for name, digest in hashes.items() if name.startswith("arms/")}

    scores = parent.get("metrics", {}).get("arms")
    if not scores or arm_files(parent["files"]) != arm_files(files):
        return {}
    return {"arms": scores, ARMS_MEASURED_IN: parent.get("metrics", {}).get(ARMS_MEASURED_IN, parent["bundle_id"])}


def build_index_bundle(champion_dir: Path, agents: list[contracts.Agent], rows: list[contracts.RoutingExample],
                       out: Path, *, data_hash: str | None, git_commit: str | None,
                       classifier_c: float = 10.0, column_min_examples: int | None = 1) -> dict[str, Any]:
    """Write to `out` a copy of the champion bundle whose agent index serves `agents` with
    `rows` as examples, and whose classifier has a column for every agent with at least
    `column_min_examples` of them and no column yet (fitted on them, the other columns fixed:
    amo.routing.index_step_classifier, inverse regularisation `classifier_c`; None: no column is
    added, params.yaml's router.shot_columns off); every other file byte-identical. The manifest
    names its parent and what changed; its metrics are filled in by `measure` (never copied from
    the champion)."""
    from amo.brain import Brain

    champion = Brain(champion_dir)  # verifies the champion; its encoder embeds the new texts
    index, changes = refresh_index(champion.index, agents, rows, champion.encoder)
    if _same(index, champion.index):
        raise NothingToPublish(f"the agents and training prompts match champion {champion.bundle_id}'s index")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(champion_dir, partial, ignore=shutil.ignore_patterns(MANIFEST, SIGNATURE))
    index.save(partial / "router")
    classifier = Classifier.load(champion_dir / "router")
    extended = (classifier if column_min_examples is None
                else index_step_classifier(classifier, index, classifier_c, min_examples=column_min_examples))
    if extended is not classifier:
        extended.save(partial / "router")
        changes["classifier_columns_added"] = list(extended.agent_ids[len(classifier.agent_ids):])
    parent = champion.manifest
    created, files = now(), file_hashes(partial)
    manifest = {**{k: v for k, v in parent.items() if k != "digest"},
                "bundle_id": new_bundle_id(created, files), "created": created,
                "git_commit": git_commit, "data_hash": data_hash, "files": files,
                "metrics": _carried_arm_scores(parent, files),
                "signing": None,  # the parent's signature covers the parent only
                "derived": {"kind": "index", "parent": parent["bundle_id"], "changes": changes}}
    write_manifest(partial, manifest)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return read_manifest(out)


def measure(bundle: Path, data: Path) -> dict[str, Any]:
    """Score `bundle` on `data`'s test splits and seal the measured metrics into its manifest."""
    from amo.assessment import assess_bundle

    metrics = {k: v for k, v in assess_bundle(bundle, data).items() if k != "rows"}  # per-row: the gate's
    manifest = verify_bundle(bundle)
    return write_manifest(bundle, {**{k: v for k, v in manifest.items() if k != "digest"}, "metrics": metrics})
