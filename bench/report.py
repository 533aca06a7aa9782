"""What the benchmark scripts share: their section of docs/benchmarks.md and their event loop."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from pathlib import Path


def section_write(path: Path, name: str, section: str) -> None:
    """Put ``section``, which begins with ``<!-- name:start -->`` and ends with
    ``<!-- name:end -->``, in place of the one ``path`` holds, or at its end. Text outside the
    markers (the notes on reading the figures) is left as it is."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if not (section.startswith(start) and section.rstrip().endswith(end)):
        raise ValueError(f"a section for {name} must sit between its own markers")
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    head, found, rest = text.partition(start)
    if found and end in rest:
        text = head + section + rest.split(end, 1)[1].removeprefix("\n")
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def uvloop_install() -> None:
    """Clients and servers on uvloop when it is installed, as the gateway runs."""
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def baseline_checkout(ref: str):
    """A detached work tree of ``ref`` (an earlier commit) to run beside the current code: both
    gateways then share this checkout's database, var/ folder and virtualenv."""
    path = Path(tempfile.mkdtemp(prefix="sy-baseline-")) / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), ref], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], capture_output=True)


def baseline_env() -> dict[str, str]:
    """What a gateway started from a baseline work tree needs to use this checkout's data."""
    return {"SWITCHYARD_PGDATA": str(REPO / "var" / "pg"), "SWITCHYARD_VAR_DIR": str(REPO / "var")}


def baseline_rows(pairs: list[tuple[str, float, float, float, float]]) -> tuple[list[str], bool]:
    """A table of the current code against the baseline, per scenario: ``(scenario, rps now,
    rps before, p50 now, p50 before)``; and whether every figure is within 3% of req/s and 0.5 ms
    of p50."""
    lines = ["| scenario | req/s now | req/s baseline | ratio | p50 ms now | p50 ms baseline | p50 change ms |",
             "|---|---|---|---|---|---|---|"]
    ok = True
    for name, rps, rps_before, p50, p50_before in pairs:
        ratio = rps / rps_before if rps_before else float("nan")
        ok = ok and ratio >= 0.97 and p50 - p50_before <= 0.5
        lines.append(f"| {name} | {rps:.0f} | {rps_before:.0f} | {ratio:.3f} | {p50:.2f} | {p50_before:.2f} | "
                     f"{p50 - p50_before:+.2f} |")
    return lines, ok
