"""What the benchmark scripts share: their section of docs/benchmarks.md and their event loop."""

from __future__ import annotations

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
