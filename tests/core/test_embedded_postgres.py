"""The embedded PostgreSQL: boots, keeps data across a restart, starts once under a race."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from config import embedded_postgres

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def scratch_pgdata():
    # A short path: the server's Unix socket lives inside the data folder.
    root = Path(tempfile.mkdtemp(prefix="sy-", dir="/tmp"))
    pgdata = root / "pg"
    yield pgdata
    embedded_postgres.stop(pgdata)
    shutil.rmtree(root, ignore_errors=True)


def test_it_survives_a_restart_with_data_intact(scratch_pgdata):
    server = embedded_postgres.ensure_running(scratch_pgdata, database="survivor")
    with psycopg.connect(server.url("survivor"), autocommit=True) as conn:
        conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO ledger VALUES (1, 'kept across restarts')")

    assert embedded_postgres.stop(scratch_pgdata) is True
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.url("survivor"), connect_timeout=2)

    restarted = embedded_postgres.ensure_running(scratch_pgdata, database="survivor")
    with psycopg.connect(restarted.url("survivor")) as conn:
        assert conn.execute("SELECT note FROM ledger WHERE id = 1").fetchone() == ("kept across restarts",)
        version = conn.execute("SHOW server_version_num").fetchone()[0]
    assert int(version) >= 180000


def test_it_starts_one_server_when_two_processes_race(scratch_pgdata):
    script = (
        "import sys; from pathlib import Path; from config import embedded_postgres as e; "
        "print(e.ensure_running(Path(sys.argv[1])).socket_dir)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(scratch_pgdata)], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    sockets = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(sockets) == 1
    server = embedded_postgres.EmbeddedServer(pgdata=scratch_pgdata, socket_dir=sockets.pop())
    with psycopg.connect(server.url()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_it_has_the_vector_extension_and_the_hnsw_index(db):
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        (version,) = cursor.fetchone()
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'cache_entry_embedding_hnsw'")
        (indexdef,) = cursor.fetchone()
    assert tuple(int(part) for part in version.split(".")[:2]) >= (0, 8)
    assert "USING hnsw" in indexdef
    assert "vector_cosine_ops" in indexdef
