"""The dependency audit of `make lint`: a known vulnerability fails it; an audit that could not
happen says so and does not fail (nor hang) CI."""

from __future__ import annotations

import importlib.util
import json
import sys

from tests.live import REPO


def _audit():
    spec = importlib.util.spec_from_file_location("ci_audit", REPO / ".ci" / "audit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(*dependencies: dict) -> str:
    return json.dumps({"dependencies": list(dependencies), "fixes": []})


def test_it_fails_on_a_known_vulnerability():
    status, lines = _audit().verdict(1, _report(
        {"name": "django", "version": "5.2.0", "vulns": [{"id": "PYSEC-2026-1", "fix_versions": ["5.2.1"]}]},
        {"name": "celery", "version": "5.7.0", "vulns": []}), "")
    assert status == 1
    assert lines == ["VULNERABLE django 5.2.0: PYSEC-2026-1 (fixed in 5.2.1)"]


def test_it_passes_a_clean_audit_and_counts_what_it_audited():
    status, lines = _audit().verdict(0, _report({"name": "django", "version": "5.2.1", "vulns": []}), "")
    assert status == 0
    assert lines == ["pip-audit: no known vulnerability in the 1 packages it could audit."]


def test_it_says_which_packages_were_not_audited_without_failing():
    status, lines = _audit().verdict(0, _report(
        {"name": "django", "skip_reason": "Dependency not found on PyPI and could not be audited: django (5.2.19)"},
        {"name": "celery", "version": "5.7.0", "vulns": []}), "")
    assert status == 0
    assert "could not reach its vulnerability database for 1 of 2 pinned packages" in lines[0]
    assert lines[1] == "  those packages were NOT audited."
    assert "no known vulnerability in the 1 packages" in lines[2]


def test_it_reports_an_unreachable_database_without_failing():
    status, lines = _audit().verdict(1, "", "Traceback ...\nrequests.exceptions.ConnectionError: Name or service "
                                            "not known")
    assert status == 0
    assert "could not reach its vulnerability database (requests.exceptions.ConnectionError" in lines[0]
    assert "NOT audited" in lines[1]


def test_it_gives_up_on_a_database_that_does_not_answer(monkeypatch, capsys):
    audit = _audit()
    monkeypatch.setattr(audit, "command", lambda files: [sys.executable, "-c", "import time; time.sleep(30)"])
    monkeypatch.setenv("AUDIT_TIMEOUT", "0.5")
    assert audit.main([]) == 0
    assert "within 0.5 s" in capsys.readouterr().out
