"""The sentence encoder as ONNX, so routing needs no torch: transformer + mean pooling + L2 norm.

`export_encoder` writes three files into a folder: `encoder.onnx` (inputs `input_ids`,
`attention_mask`, dynamic batch and sequence; output `embeddings` (B, D)), `encoder_tokenizer.json`
(the model's own `tokenizer.json`, truncating at the model's max sequence length) and
`encoder.json` (dimension, max length, where it came from). `OnnxEncoder` loads that folder with
onnxruntime and the `tokenizers` library and has the same `encode(texts)` contract as
`amo.models.Encoder`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

ENCODER_ONNX = "encoder.onnx"
ENCODER_TOKENIZER = "encoder_tokenizer.json"
ENCODER_META = "encoder.json"
ENCODER_FILES = (ENCODER_ONNX, ENCODER_TOKENIZER, ENCODER_META)


def _max_length(model_dir: Path) -> int:
    """sentence-transformers' max_seq_length (256 for all-MiniLM-L6-v2), not tokenizer.json's:
    sentence_bert_config.json in the older layout, the tokenizer's model_max_length in the one
    sentence-transformers 6 saves tuned models in."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"),
                      ("tokenizer_config.json", "model_max_length")):
        config = model_dir / name
        if config.is_file() and key in (values := json.loads(config.read_text())):
            return int(values[key])
    return int(json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings", 512))


def _check_pooling(model_dir: Path) -> None:
    """Mean pooling only, in either config layout: the older boolean flags or the newer
    `pooling_mode` that sentence-transformers writes when it saves a tuned model."""
    pooling = model_dir / "1_Pooling" / "config.json"
    if pooling.is_file():
        config = json.loads(pooling.read_text())
        if "pooling_mode" in config:
            mean = config["pooling_mode"] == "mean"
        else:
            mean = bool(config.get("pooling_mode_mean_tokens")) and not any(
                config.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                        "pooling_mode_mean_sqrt_len_tokens"))
        if not mean:
            raise ValueError(f"{pooling}: only mean pooling is exported, got {config}")


def export_encoder(model_dir: Path, out_dir: Path, opset: int = 17) -> Path:
    """Export the sentence-transformers model in `model_dir` to `out_dir`; returns the ONNX path."""
    import torch
    from transformers import AutoModel

    from amo.models import offline

    offline()
    model_dir = Path(model_dir)
    _check_pooling(model_dir)
    transformer = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                      token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, D)
            return mean / mean.norm(dim=1, keepdim=True).clamp(min=1e-12)

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ENCODER_ONNX
    ids = torch.ones(2, 7, dtype=torch.long)
    with torch.no_grad():
        torch.onnx.export(
            Pooled().eval(), (ids, torch.ones_like(ids)), str(path), dynamo=False,
            opset_version=opset, input_names=["input_ids", "attention_mask"],
            output_names=["embeddings"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                          "attention_mask": {0: "batch", 1: "tokens"}, "embeddings": {0: "batch"}},
        )
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    max_length = _max_length(model_dir)
    tokenizer["truncation"] = {"direction": "Right", "max_length": max_length,
                               "strategy": "LongestFirst", "stride": 0}
    tokenizer["padding"] = None  # OnnxEncoder pads each batch to its longest text
    (out_dir / ENCODER_TOKENIZER).write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    from amo.embeddings import encoder_identity

    # source_identity: the exported encoder's content hash (amo.embeddings), so the cheap index
    # step can tell that this ONNX file is the stage encoder and embed with it, without torch.
    meta = {"dim": int(transformer.config.hidden_size), "max_length": max_length,
            "source": str(model_dir.name), "source_identity": encoder_identity(model_dir), "opset": opset}
    (out_dir / ENCODER_META).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def has_onnx_encoder(directory: Path) -> bool:
    return all((Path(directory) / name).is_file() for name in ENCODER_FILES)


class OnnxEncoder:
    """Text -> L2-normalised float32 vectors through onnxruntime; same contract as Encoder."""

    def __init__(self, directory: Path, batch_size: int = 64, threads: int = 1) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        directory = Path(directory)
        if not has_onnx_encoder(directory):
            missing = [n for n in ENCODER_FILES if not (directory / n).is_file()]
            raise FileNotFoundError(f"{directory}: no ONNX encoder (missing {', '.join(missing)})")
        self.path = directory
        self.batch_size = batch_size
        self.meta: dict[str, Any] = json.loads((directory / ENCODER_META).read_text())
        self.tokenizer = Tokenizer.from_file(str(directory / ENCODER_TOKENIZER))
        self.tokenizer.enable_truncation(self.meta["max_length"])
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_padding(pad_id=pad_id if pad_id is not None else 0)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(directory / ENCODER_ONNX), options,
                                            providers=["CPUExecutionProvider"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer.encode_batch(list(texts[start:start + self.batch_size]))
            ids = np.array([e.ids for e in batch], dtype=np.int64)
            mask = np.array([e.attention_mask for e in batch], dtype=np.int64)
            (vectors,) = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
            parts.append(vectors)
        return np.concatenate(parts).astype(np.float32)
