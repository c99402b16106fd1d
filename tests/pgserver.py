"""A real PostgreSQL for the tests, from Debian's packages (postgresql-15; scripts/test.sh
installs it): initdb and pg_ctl into a temporary directory, listening only on a unix socket
in a 0700 directory (no TCP), never the system service. As root the server runs as the
`postgres` user (PostgreSQL refuses to run as root); otherwise as the user running the tests.

One server per test process (session fixture `pg_server`); each test gets a database of its
own from `pg_server.new_database()`, so no test sees another's rows.
"""
from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "central_test"


def missing() -> str | None:
    """Why no PostgreSQL can be started here, or None."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (BIN / tool).exists():
            return f"PostgreSQL 15 is not installed ({BIN / tool} missing; apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "no `postgres` user to run PostgreSQL as (the postgresql package creates it)"
    return None


class PGServer:
    """A running PostgreSQL cluster in a temporary directory."""

    _names = itertools.count(1)

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "sock"
        self.port = 5432
        self._user = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            self._user = pw.pw_uid
            os.chown(root, pw.pw_uid, pw.pw_gid)
        self.socket_dir.mkdir(mode=0o700)
        if self._user is not None:
            os.chown(self.socket_dir, self._user, pwd.getpwnam("postgres").pw_gid)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in args], check=check, capture_output=True, text=True,
                              user=self._user, timeout=120)

    def start(self, durable: bool = False) -> None:
        """initdb and start; durable: PostgreSQL's defaults (fsync on; for benchmarks), else
        fsync off (the tests' data is thrown away)."""
        self._run(BIN / "initdb", "-D", self.data, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        opts = (f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' -c port={self.port}"
                f" -c fsync={'on' if durable else 'off'} -c max_connections=200 -c shared_buffers=64MB")
        self._run(BIN / "pg_ctl", "-D", self.data, "-l", self.root / "log", "-o", opts, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run(BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", check=False)

    def pids(self) -> list[int]:
        """The server's processes (the postmaster and its children), for CPU accounting."""
        main = int((self.data / "postmaster.pid").read_text().split()[0])
        kids = [int(p) for p in Path(f"/proc/{main}/task/{main}/children").read_text().split()]
        return [main, *kids]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql:///{database}?host={self.socket_dir}&port={self.port}&user={SUPERUSER}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser with Debian's psql; its output."""
        out = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir),
                              "-p", str(self.port), "-U", SUPERUSER, "-d", database, "-c", sql],
                             check=True, capture_output=True, text=True, timeout=60)
        return out.stdout.strip()

    def drop_database(self, url: str) -> None:
        name = url.split("///", 1)[1].split("?", 1)[0]
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def new_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture(scope="session")
def pg_server():
    why = missing()
    if why:
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="central-pg-"))
    server = PGServer(root)
    try:
        server.start()
    except subprocess.CalledProcessError as exc:
        log = root / "log"
        pytest.fail(f"PostgreSQL did not start: {exc.stderr or exc.stdout}"
                    f"{log.read_text() if log.exists() else ''}")
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server):
    """The URL of a new database of its own for this test (dropped after it)."""
    url = pg_server.new_database()
    yield url
    pg_server.drop_database(url)
