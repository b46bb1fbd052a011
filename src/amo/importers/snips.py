"""SNIPS (MiuLab/SlotGated-SLU layout) -> arm task `slot_extraction`: utterance -> slots as JSON.

Source folder: `{train,valid,test}/{seq.in,seq.out}` (one utterance a line, whitespace tokens, and
its BIO slot tags). The published split is kept: tasks/slot_extraction/train from `train/`, test
from `test/`; `valid/` is not used (train already has 13,084 utterances). Test utterances that also
occur in train (26 on the published data) are dropped, so no utterance is on both sides; the seed
is unused because the split is the publisher's.

The output is a JSON object (sorted keys) from slot type to the slot's words; a slot type that
occurs twice in one utterance (61 train utterances) maps to the list of its values in order.
On /work/shared/datasets/snips: train 13,084, test 674 examples.
"""

from __future__ import annotations

import json
from pathlib import Path

from amo.importers import Imported, Record, SourceError, require

TASK = "slot_extraction"


def slots(tokens: list[str], tags: list[str]) -> dict[str, str | list[str]]:
    """Slot type -> value from BIO tags; an I- tag that does not continue its type starts a span."""
    spans: list[tuple[str, list[str]]] = []
    previous = "O"
    for token, tag in zip(tokens, tags):
        if tag != "O":
            kind = tag[2:]
            if tag.startswith("I-") and previous != "O" and previous[2:] == kind:
                spans[-1][1].append(token)
            else:
                spans.append((kind, [token]))
        previous = tag
    out: dict[str, str | list[str]] = {}
    for kind, words in spans:
        value = " ".join(words)
        if kind not in out:
            out[kind] = value
        else:
            existing = out[kind]
            out[kind] = [*existing, value] if isinstance(existing, list) else [existing, value]
    return out


def read_split(folder: Path) -> list[Record]:
    """Records of one published split; SourceError names the file and line of a bad row."""
    seq_in, seq_out = require(folder, "seq.in", "seq.out")
    inputs = seq_in.read_text(encoding="utf-8").splitlines()
    outputs = seq_out.read_text(encoding="utf-8").splitlines()
    if len(inputs) != len(outputs):
        raise SourceError(f"{seq_out}: {len(outputs)} lines, but {seq_in} has {len(inputs)}")
    records = []
    for row, (text, tagged) in enumerate(zip(inputs, outputs), start=1):
        tokens, tags = text.split(), tagged.split()
        if not tokens:
            continue
        if len(tokens) != len(tags):
            raise SourceError(f"{seq_out}: row {row}: {len(tags)} tags for {len(tokens)} tokens")
        bad = [t for t in tags if t != "O" and not (t[:2] in ("B-", "I-") and len(t) > 2)]
        if bad:
            raise SourceError(f"{seq_out}: row {row}: not a BIO tag: {bad[0]!r}")
        records.append({"input": " ".join(tokens),
                        "output": json.dumps(slots(tokens, tags), ensure_ascii=False, sort_keys=True)})
    return records


def load(source: Path, seed: int) -> Imported:
    """SNIPS as the `slot_extraction` task (train and test as published, leaks dropped)."""
    require(source, "train", "test")
    train = read_split(Path(source) / "train")
    seen = {r["input"] for r in train}
    test = [r for r in read_split(Path(source) / "test") if r["input"] not in seen]
    return Imported(name="snips", tasks={TASK: {"train": train, "test": test}})
