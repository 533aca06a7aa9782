"""Audit the pinned dependencies for known vulnerabilities (``make lint`` runs it).

pip-audit looks each pin up in a vulnerability database (PyPI's JSON API by default). This
exits 1 when it names a vulnerability. When the database cannot be reached, does not answer in
time, or does not know the pinned versions (a package index that mirrors wheels without PyPI's
JSON API answers "not found" for every pin), it prints plainly that those packages were NOT
audited and exits 0: a network the machine does not have must not fail CI or hang it, and
"not audited" must never read as "no known vulnerabilities".

    python .ci/audit.py [requirements files...]     (default: requirements.txt requirements-dev.txt)
    AUDIT_TIMEOUT=120                               seconds before giving up on the database
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FILES = ("requirements.txt", "requirements-dev.txt")


def command(files: list[str]) -> list[str]:
    """pip-audit over the pins the files name. ``--no-deps`` and ``--disable-pip`` keep it from
    building a virtualenv to resolve their own dependencies (which needs the index and minutes);
    those are not audited."""
    args = [sys.executable, "-m", "pip_audit", "--no-deps", "--disable-pip", "--format", "json",
            "--progress-spinner", "off"]
    for name in files:
        args += ["--requirement", name]
    return args


def verdict(returncode: int, stdout: str, stderr: str) -> tuple[int, list[str]]:
    """The exit status and the lines to print for one pip-audit run."""
    try:
        report = json.loads(stdout)
        dependencies = report["dependencies"]
    except (ValueError, KeyError, TypeError):
        reason = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "no output")
        return 0, [f"pip-audit could not reach its vulnerability database ({reason[:300]}):",
                   "  the dependencies were NOT audited."]
    vulnerable = [d for d in dependencies if d.get("vulns")]
    skipped = [d for d in dependencies if d.get("skip_reason")]
    audited = len(dependencies) - len(skipped)
    lines = []
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed version yet"
            lines.append(f"VULNERABLE {dep['name']} {dep.get('version', '')}: {vuln.get('id')} (fixed in {fixes})")
    if skipped:
        names = ", ".join(sorted(d["name"] for d in skipped))
        lines.append(f"pip-audit could not reach its vulnerability database for {len(skipped)} of "
                     f"{len(dependencies)} pinned packages (not found there): {names}")
        lines.append("  those packages were NOT audited.")
    if vulnerable:
        return 1, lines
    if audited:
        lines.append(f"pip-audit: no known vulnerability in the {audited} packages it could audit.")
    elif not dependencies:
        lines.append("pip-audit found no pinned package to audit.")
    return 0, lines


def main(argv: list[str]) -> int:
    files = argv or list(DEFAULT_FILES)
    timeout = float(os.environ.get("AUDIT_TIMEOUT", "120"))
    try:
        done = subprocess.run(command(files), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        print(f"pip-audit could not reach its vulnerability database within {timeout:g} s:\n"
              "  the dependencies were NOT audited.")
        return 0
    status, lines = verdict(done.returncode, done.stdout, done.stderr)
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
