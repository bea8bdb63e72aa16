"""A throwaway PostgreSQL server for tests, demos and benchmarks.

A real server from the machine's own binaries (`initdb` into a temporary directory, then
`postgres` on a free loopback port), not an imitation: the store's SQL, locks and
`SKIP LOCKED` claims are exercised exactly as in production. PostgreSQL refuses to run as
root, so as root the server runs as the `postgres` user in a directory it owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# Where the binaries live: on PATH, a source build's /usr/local/bin, Debian's versioned
# directories (newest first).
_SEARCH = ("/usr/local/bin", "/usr/local/pgsql/bin")
_DEBIAN = "/usr/lib/postgresql/*/bin"
_SERVER_USER = "postgres"


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be started here; the message says why, in one line."""


def find_binaries() -> Path:
    """The directory holding `initdb` and `postgres`, or PostgresUnavailable."""
    found = shutil.which("initdb")
    candidates = [Path(found).parent] if found else []
    candidates += [Path(p) for p in _SEARCH]
    debian = sorted(glob.glob(_DEBIAN), key=_version, reverse=True)
    candidates += [Path(p) for p in debian]
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            return directory
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, postgres) on PATH, in /usr/local/bin or in "
        "/usr/lib/postgresql/<version>/bin; install Debian's `postgresql` package "
        "(`make test` does so when run as root)"
    )


def _version(path: str) -> float:
    try:
        return float(Path(path).parent.name)
    except ValueError:
        return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPostgres:
    """`start()` a server, `url(db)` to reach a database on it, `stop()` removes it all."""

    def __init__(self, *, user: str = "monitor") -> None:
        self.user = user
        self.port = 0
        self.root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        self._binaries = Path()

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 30.0) -> LocalPostgres:
        binaries = find_binaries()
        self.root = Path(tempfile.mkdtemp(prefix="convai-monitor-pg-"))
        data, sockets = self.root / "data", self.root / "sock"
        data.mkdir()
        sockets.mkdir()
        if os.geteuid() == 0:
            try:
                server = pwd.getpwnam(_SERVER_USER)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root and there is no {_SERVER_USER!r} user to run the server"
                ) from None
            for path in (self.root, data, sockets):
                os.chown(path, server.pw_uid, server.pw_gid)
            self._as = ["runuser", "-u", _SERVER_USER, "--"]
        init = subprocess.run(
            [
                *self._as,
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                self.user,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            capture_output=True,
            check=False,
        )
        if init.returncode != 0:
            self._cleanup()
            raise PostgresUnavailable(
                f"initdb failed: {init.stderr.decode(errors='replace').strip()[-300:]}"
            )
        self.port = free_port()
        self._binaries = binaries
        self._launch(timeout)
        return self

    def _launch(self, timeout: float) -> None:
        assert self.root is not None
        data, sockets, log = self.root / "data", self.root / "sock", self.root / "server.log"
        with log.open("ab") as sink:
            self._proc = subprocess.Popen(
                [
                    *self._as,
                    str(self._binaries / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(sockets),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    # A test server holds nothing worth an fsync; durability is not tested
                    # here, SQL and concurrency are.
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._wait(timeout, log)

    def halt(self) -> None:
        """Stop the server but keep its data: the database is unreachable until `resume()`
        (a restart, a failover of the database, a network cut)."""
        self._shutdown()

    def resume(self, timeout: float = 30.0) -> None:
        """Start a halted server again, on the same port with the same data."""
        self._launch(timeout)

    def _wait(self, timeout: float, log: Path) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        dsn = f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres"
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                tail = log.read_text(errors="replace").strip()[-300:]
                self.stop()
                raise PostgresUnavailable(f"postgres exited at start: {tail}")
            try:
                psycopg.connect(dsn, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise PostgresUnavailable(
                        f"postgres did not accept connections within {timeout:.0f}s"
                    ) from None
                time.sleep(0.05)

    def create_database(self, name: str) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        dsn = f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self) -> None:
        self._shutdown()
        self._cleanup()

    def _shutdown(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            # SIGINT is PostgreSQL's "fast" shutdown: disconnect clients and stop now. It
            # goes to the postmaster itself (its pid file), not to runuser in between.
            self._signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None

    def _signal(self, sig: signal.Signals) -> None:
        assert self.root is not None
        try:
            pid = int((self.root / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = self._proc.pid if self._proc is not None else 0
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _cleanup(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
