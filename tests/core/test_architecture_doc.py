"""docs/architecture.md names the code as it is: every module, folder and dotted name it cites
exists, and every module of the gateway's doors, dialects and pipeline is on its map."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "architecture.md").read_text()


def _exists(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):  # a module, or a name inside one
        path = REPO.joinpath(*parts[:cut])
        if path.with_suffix(".py").exists() or (path / "__init__.py").exists():
            return cut == len(parts) or parts[cut] in path.with_suffix(".py").read_text()
    return False


def test_it_cites_only_paths_that_exist():
    paths = set(re.findall(r"\b(apps/[\w/]+(?:\.py|/))", DOC))
    assert paths, "the map cites no paths"
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"docs/architecture.md cites paths that do not exist: {missing}"


def test_it_cites_only_dotted_names_that_exist():
    names = set(re.findall(r"`(apps\.[\w.]+)`", DOC))
    assert names
    missing = sorted(n for n in names if not _exists(n))
    assert not missing, f"docs/architecture.md cites names that do not exist: {missing}"


def test_it_maps_every_module_of_the_request_path():
    gateway = REPO / "apps" / "gateway"
    unmapped = []
    for folder in ("doors", "dialects", "pipeline"):
        for module in sorted((gateway / folder).glob("*.py")):
            if module.name == "__init__.py":
                continue
            if f"{module.stem}.py" not in DOC and f"`{module.stem}`" not in DOC:
                unmapped.append(f"{folder}/{module.name}")
    assert not unmapped, f"docs/architecture.md does not say what these are: {unmapped}"
