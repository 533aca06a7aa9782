"""Train the semantic cache's cross-encoder (``bench/cross_encoder.py``) and write it to var/models/.

    python bench/verifier_cross_train.py [--layers 3] [--epochs 4] [--lr 2e-4] [--data-dir ../shared/data]

The model reads both prompts at once, "[CLS] a [SEP] b [SEP]", through the first ``--layers``
transformer layers of the local all-MiniLM-L6-v2, mean-pools the output and scores it with one
linear unit. The word, position and type embeddings stay frozen: they are read from the installed
weights at run time, so the written graph holds only the layers and the head (5.5 MB at 3 layers).

1. Data: the tuning half of every pair set (``bench.cache_quality.split``, fixed seed; the other
   halves are never read here): the project's prompt pairs with all of
   ``bench/data/prompt_tuning_extra.tsv``, the support-queue pairs, PAWS-Wiki and MRPC. The tuning
   half is cut again by group (a prompt's rewording and near miss stay together): two thirds
   train the model, one third (``CALIBRATION_FOLD``) only calibrates it.
2. Training: weighted binary cross-entropy, AdamW, linear decay, fixed seed, one CPU thread;
   each pair in a random order of its two prompts each epoch; a prompt pair counts
   ``PROMPT_WEIGHT`` times a public one.
3. Export: the layers and head as an ONNX graph (input: the embedded tokens and their mask),
   weights quantised to int8 (``onnxruntime.quantization``), checked against the torch model.
4. Operating points from the calibration third, scored by the int8 graph: for each target
   precision and each pair set, the lowest score that reaches it among the pairs with cosine at
   least the default threshold that pass the guards (``apps.cache.verify.guards_check``); the
   strictest of the sets is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from apps.cache import verify  # noqa: E402
from apps.cache.pair_features import prompt_parse  # noqa: E402
from bench import cross_encoder  # noqa: E402
from bench.cache_quality import Pair, mrpc_pairs, own_pairs, paws_pairs, question_pairs, split, triple_pairs  # noqa: E402
from bench.verifier_train import DEFAULT_THRESHOLD, EXTRA_FILE, cosines, operating_points  # noqa: E402

SEED = 7
FOLDS = 3
CALIBRATION_FOLD = 0
PROMPT_WEIGHT = 3.0
PUBLIC_WEIGHT = 1.0
BATCH = 32
LEARNING_RATE = 2e-4
MAX_TOKENS = 128


def fold_of(key: str) -> int:
    return random.Random(f"{SEED}:{key}").randrange(FOLDS)


def tuning_sets(data_dir: Path) -> dict[str, list[tuple[Pair, str]]]:
    """Each set's tuning half, every pair with the key that decides its fold (its group)."""
    extra = [Pair(p.a, p.b, p.duplicate, p.kind, p.group) for p in triple_pairs(EXTRA_FILE)]
    sets = {"own": [(p, f"own:{p.group}") for p in split(own_pairs())[0]] + [(p, f"extra:{p.group}") for p in extra],
            "questions": [(p, f"questions:{p.group}") for p in split(question_pairs())[0]]}
    for name, loader in (("paws", paws_pairs), ("mrpc", mrpc_pairs)):
        sets[name] = [(p, f"{name}:{p.a}\t{p.b}") for p in split(loader(data_dir))[0]]
    return sets


def build(layers: int):
    import torch
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(cross_encoder.weights_dir()), attn_implementation="eager")

    class Cross(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(bert.encoder.layer[:layers])
            self.head = torch.nn.Linear(bert.config.hidden_size, 1)

        def forward(self, hidden, mask):
            additive = ((1.0 - mask) * -10000.0)[:, None, None, :]
            for layer in self.layers:
                out = layer(hidden, attention_mask=additive)
                hidden = out[0] if isinstance(out, tuple) else out
            weights = mask.unsqueeze(-1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            return self.head(pooled).squeeze(-1)

    torch.manual_seed(SEED)
    model = Cross()
    torch.nn.init.normal_(model.head.weight, std=0.02)
    torch.nn.init.zeros_(model.head.bias)
    return model


def batches(pairs: list[tuple[str, str, float, float]], rng: random.Random):
    order = list(range(len(pairs)))
    rng.shuffle(order)
    for start in range(0, len(order), BATCH):
        yield [pairs[i] for i in order[start:start + BATCH]]


def embed_batch(embeddings: cross_encoder.Embeddings, rows: list[tuple[str, str]]):
    import torch

    hidden, mask = embeddings.embed(rows)
    return torch.from_numpy(hidden), torch.from_numpy(mask)


def train(model, pairs: list[tuple[str, str, float, float]], embeddings, epochs: int, lr: float) -> None:
    import torch

    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * ((len(pairs) + BATCH - 1) // BATCH)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    rng = random.Random(SEED)
    model.train()
    step = 0
    started = time.perf_counter()
    for epoch in range(epochs):
        total = 0.0
        for batch in batches(pairs, rng):
            rows = [(a, b) if rng.random() < 0.5 else (b, a) for a, b, _, _ in batch]
            hidden, mask = embed_batch(embeddings, rows)
            labels = torch.tensor([y for _, _, y, _ in batch])
            weights = torch.tensor([w for _, _, _, w in batch])
            logits = model(hidden, mask)
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
                    * weights).sum() / weights.sum()
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            step += 1
            total += float(loss.detach())
            if step % 50 == 0:
                print(f"  epoch {epoch + 1} step {step}/{steps} loss {total / (step - epoch * (steps // epochs)):.4f} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
    model.eval()


def export(model, target: Path, embeddings) -> None:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    full = target.with_name(target.stem + ".fp32.onnx")
    hidden, mask = embed_batch(embeddings, [("How do I sort a list in Python?", "Sorting a python list, how?"),
                                            ("What is the capital of France?", "capital of Spain")])
    with torch.no_grad():
        torch.onnx.export(model, (hidden, mask), str(full), input_names=["hidden", "mask"], output_names=["logit"],
                          opset_version=17, dynamo=False,
                          dynamic_axes={"hidden": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"},
                                        "logit": {0: "batch"}})
    quantize_dynamic(str(full), str(target), weight_type=QuantType.QInt8, per_channel=True)
    full.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=LEARNING_RATE)
    parser.add_argument("--prompt-weight", type=float, default=PROMPT_WEIGHT)
    parser.add_argument("--limit", type=int, default=0, help="at most this many public pairs per set (0: all)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    random.seed(SEED)
    np.random.seed(SEED)
    started = time.perf_counter()
    sets = tuning_sets(args.data_dir)
    embeddings = cross_encoder.Embeddings()
    train_rows: list[tuple[str, str, float, float]] = []
    calibration: dict[str, list[Pair]] = {}
    for name, rows in sets.items():
        if args.limit and name in ("paws", "mrpc"):
            rows = random.Random(SEED).sample(rows, min(args.limit, len(rows)))
        weight = args.prompt_weight if name in ("own", "questions") else PUBLIC_WEIGHT
        for pair, key in rows:
            if fold_of(key) == CALIBRATION_FOLD:
                calibration.setdefault(name, []).append(pair)
            else:
                train_rows.append((pair.a, pair.b, float(pair.duplicate), weight))
    print(f"training on {len(train_rows)} pairs; calibration: "
          + ", ".join(f"{k} {len(v)}" for k, v in calibration.items()), flush=True)
    model = build(args.layers)
    train(model, train_rows, embeddings, args.epochs, args.lr)
    trained = time.perf_counter() - started
    target = cross_encoder.MODEL_FILE
    export(model, target, embeddings)
    scorer = cross_encoder.CrossEncoder(target, embeddings=embeddings)

    # The int8 graph against the torch model it came from, on calibration pairs.
    probe = [(p.a, p.b) for p in calibration["own"][:32]]
    with torch.no_grad():
        hidden, mask = embed_batch(embeddings, probe)
        expected = torch.sigmoid(model(hidden, mask)).numpy()
    got = np.array([scorer.score(a, b) for a, b in probe])
    print(f"int8 graph vs torch: max |score difference| {np.abs(expected - got).max():.4f}")

    points: dict[str, float] = {}
    report = {}
    for name, pairs in calibration.items():
        sims = cosines(pairs)
        keep = [p for p, s in zip(pairs, sims, strict=True) if s >= DEFAULT_THRESHOLD
                and not verify.guards_check(prompt_parse(p.a), prompt_parse(p.b))]
        scores = np.array([scorer.score(p.a, p.b) for p in keep])
        labels = np.array([float(p.duplicate) for p in keep])
        set_points = operating_points(scores, labels)
        report[name] = {"pairs": len(keep), "duplicates": int(labels.sum()), "points": set_points}
        for key, minimum in set_points.items():
            points[key] = max(points.get(key, 0.0), minimum)
        threshold = set_points[f"{verify.DEFAULT_PRECISION:.2f}"]
        recall = float((scores[labels == 1] >= threshold).mean())
        print(f"  {name}: {len(keep)} candidates ({int(labels.sum())} duplicates); own point at "
              f"{verify.DEFAULT_PRECISION}: {threshold:.4f} recall {recall:.3f}")
    print(f"operating points {points}; trained in {trained:.0f} s")
    cross_encoder.POINTS_FILE.write_text(json.dumps({
        "about": "bench/cross_encoder.py's operating points, written by bench/verifier_cross_train.py",
        "operating_points": points, "calibration": report,
        "trained_on": {"pairs": len(train_rows), "layers": args.layers, "epochs": args.epochs, "lr": args.lr,
                       "seed": SEED, "prompt_weight": args.prompt_weight, "public_weight": PUBLIC_WEIGHT,
                       "limit": args.limit,
                       "seconds": round(trained)},
    }, indent=1) + "\n")
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB) and {cross_encoder.POINTS_FILE}")


if __name__ == "__main__":
    main()
