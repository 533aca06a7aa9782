"""The request log's admin search on a big log, measured over HTTP.

    python bench/search.py [--rows 10000000] [--tenants 50] [--runs 7] [--write docs/benchmarks.md]

1. Loads ``--rows`` request log rows with the generator of ``bench/dashboard.py`` (30 days,
   ``--tenants`` tenants, end users, tags and sessions; kept for the next run when the count
   matches, and shared with that bench), and a kept request body for one row in fifty, for the
   ``text:`` search.
2. Starts the admin (``manage.py runserver`` on loopback) and, logged in as a staff user, times
   the request log's changelist (``/admin/usage/requestlog/``) for each kind of search: ``user:``,
   ``tag:`` (a common tag and a rare one), ``session:``, ``text:``, a model, a status, a time
   span, and a search narrowed to one tenant. Reports the median (p50) and the slowest of
   ``--runs`` page loads after a first, warming one, and the number of rows each page shows.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.dashboard import _load  # noqa: E402
from bench.report import section_write  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,127.0.0.1,localhost")

MARK_START, MARK_END = "<!-- bench/search.py:start -->", "<!-- bench/search.py:end -->"
BODY_EVERY = 50


def _bodies() -> int:
    """Kept bodies for one log row in ``BODY_EVERY`` of the bench's rows (their words name an
    order number, ``order <n % 5000> refund``), loaded again when the log was."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM usage_requestlog WHERE request_id LIKE 'bench-%%' "
                       "AND substr(request_id, 7)::bigint %% %s = 0", [BODY_EVERY])
        expected = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM usage_requestbody WHERE request_id LIKE 'bench-%%'")
        if cursor.fetchone()[0] == expected:
            return 0
        cursor.execute("DELETE FROM usage_requestbody WHERE request_id LIKE 'bench-%%'")
        cursor.execute(
            "INSERT INTO usage_requestbody (tenant_id, request_id, prompt, answer, created_at) "
            "SELECT tenant_id, request_id, jsonb_build_array(jsonb_build_object('role', 'user', 'content', "
            "'about order ' || (substr(request_id, 7)::bigint %% 5000) || ' please refund')), "
            "'Refund issued.', created_at FROM usage_requestlog "
            "WHERE request_id LIKE 'bench-%%' AND substr(request_id, 7)::bigint %% %s = 0", [BODY_EVERY])
        loaded = cursor.rowcount
        cursor.execute("ANALYZE usage_requestbody")
    return loaded


def _server(port: int) -> subprocess.Popen:
    env = {**os.environ, "ALLOWED_HOSTS": "127.0.0.1,localhost"}
    server = subprocess.Popen(  # nosec B603  # our own manage.py, fixed arguments
        [sys.executable, str(REPO / "manage.py"), "runserver", f"127.0.0.1:{port}", "--noreload", "--nothreading"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    for _ in range(300):
        try:
            httpx.get(f"http://127.0.0.1:{port}/admin/login/", timeout=1)
            return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the admin did not start")


def _session_cookie() -> str:
    """A logged-in staff session, made the way Django's test client's ``force_login`` does."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    user = get_user_model().objects.filter(username="bench-operator").first() or get_user_model().objects.create_user(
        "bench-operator", password=os.urandom(16).hex(), is_staff=True, is_superuser=True)
    if not user.is_superuser:
        user.is_superuser = True
        user.save(update_fields=["is_superuser"])
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return session.session_key


def _queries(tenant_id: int) -> list[tuple[str, dict]]:
    now = datetime.now(UTC)
    return [
        ("no search (latest page)", {}),
        ("`user:` an end user", {"q": "user:user-1234"}),
        ("`tag:` a rare tag", {"q": "tag:team-123"}),
        ("`tag:` a common tag", {"q": "tag:prod"}),
        ("`session:` a session", {"q": "session:sess-12345"}),
        ("`text:` words in kept bodies", {"q": "text:order 1250"}),
        ("model", {"model_used": "sim-premium"}),
        ("status 502", {"status_code": "502"}),
        ("status 5xx", {"status_code": "5xx"}),
        ("time: one hour 10 days ago", {"created_at__gte": str(now - timedelta(days=10)),
                                        "created_at__lt": str(now - timedelta(days=10) + timedelta(hours=1))}),
        ("`user:` within its tenant", {"q": "user:user-1234", "tenant__id__exact": str(tenant_id)}),
        ("`tag:` rare, with status 502", {"q": "tag:team-123", "status_code": "502"}),
    ]


def _time(port: int, cookie: str, params: dict, runs: int) -> tuple[float, float, int]:
    import httpx

    times, shown = [], 0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", cookies={"sessionid": cookie}, timeout=120) as client:
        for _ in range(runs + 1):
            started = time.perf_counter()
            response = client.get("/admin/usage/requestlog/", params=params)
            times.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise SystemExit(f"{params}: HTTP {response.status_code}")
            shown = len(re.findall(r'<tr[^>]*>\s*<td class="action-checkbox"|<th class="field-when"', response.text))
    return statistics.median(times[1:]), max(times[1:]), shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--port", type=int, default=8719)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    import django

    django.setup()
    from apps.tenants.models import Tenant

    loaded = _load(args.rows, args.tenants)
    bodies = _bodies()
    cookie = _session_cookie()
    tenant = Tenant.objects.get(slug="bench-dash-34")  # user-1234's tenant (1234 % 50)
    server = _server(args.port)
    lines = ["| search | p50 | max | rows on the page |", "|---|---|---|---|"]
    try:
        for name, params in _queries(tenant.pk):
            p50, slowest, shown = _time(args.port, cookie, params, args.runs)
            lines.append(f"| {name} | {p50:.0f} ms | {slowest:.0f} ms | {shown} |")
            print(lines[-1], flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    head = (f"Request log: {args.rows:,} rows over 30 days, {args.tenants} tenants"
            + (f" (loaded in {loaded:.0f} s)" if loaded else " (already loaded)")
            + f"; kept bodies for one row in {BODY_EVERY}"
            + (f" ({bodies:,} loaded now)" if bodies else "") + ". Each figure is the whole page load "
            "of `/admin/usage/requestlog/` over HTTP (the development server, one process, staff login), "
            f"{args.runs} loads after a warming one.")
    body = head + "\n\n" + "\n".join(lines)
    print(body)
    if args.write:
        section = (f"{MARK_START}\n## Request log search on a big log (`bench/search.py`)\n\nCommand: `python "
                   f"bench/search.py --rows {args.rows} --tenants {args.tenants} --write {args.write}`. Run "
                   f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, 15-minute load average "
                   f"{os.getloadavg()[2]:.1f} at the end (other work shared them).\n\n{body}\n{MARK_END}\n")
        section_write(args.write, "bench/search.py", section)


if __name__ == "__main__":
    main()
