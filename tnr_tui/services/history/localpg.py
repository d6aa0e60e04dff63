"""A throwaway local PostgreSQL server (tests, benches, trying the shared history on one machine).

`LocalPostgres.start()` runs `initdb` and `postgres` from the first server found (`find_server`): Debian's
package (`/usr/lib/postgresql/N/bin`, with contrib, so pg_trgm), then the binaries that the pip package
`pgserver` ships (no contrib: no pg_trgm), then `initdb`/`postgres` on PATH. The server listens on a unix
socket in its own temporary directory only (no TCP port, so nothing collides or is reachable from outside);
`url` is the SQLAlchemy URL for it. PostgreSQL refuses to run as root: under root the server runs as the
`postgres` user if there is one, else `nobody`, and its directory is given to that user.

Durability is switched off (fsync, full_page_writes, synchronous_commit): this server is for tests and
measurements, never for a history anyone keeps.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DATABASE = "tnr"
SUPERUSER = "tnr"


class NoServer(RuntimeError):
    """No PostgreSQL server binaries could be found or started; the message says why (for pytest.skip)."""


@dataclass(frozen=True)
class ServerBinaries:
    bindir: Path
    source: str  # "debian", "pgserver" or "PATH"

    @property
    def has_trigram(self) -> bool:
        """Whether the server ships the pg_trgm extension (contrib)."""
        share = subprocess.run(
            [str(self.bindir / "pg_config"), "--sharedir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if share and (Path(share) / "extension" / "pg_trgm.control").exists():
            return True
        # Debian's pg_config may be absent from the server's bindir: look beside the binaries.
        version = self.bindir.parent.name
        return Path(f"/usr/share/postgresql/{version}/extension/pg_trgm.control").exists()


def find_server() -> ServerBinaries:
    """The first usable server binaries (see the module docstring); NoServer naming what was tried."""
    tried = []
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    for postgres in reversed(debian):
        bindir = Path(postgres).parent
        if (bindir / "initdb").exists():
            return ServerBinaries(bindir, "debian")
    tried.append("Debian's /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    try:
        import pgserver  # noqa: F401  (only its binaries are used)

        bindir = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if (bindir / "postgres").exists() and (bindir / "initdb").exists():
            return ServerBinaries(bindir, "pgserver")
    except ImportError:
        pass
    tried.append("the pip package pgserver (pip install pgserver)")
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres and Path(initdb).parent == Path(postgres).parent:
        return ServerBinaries(Path(postgres).parent, "PATH")
    tried.append("initdb and postgres on PATH")
    raise NoServer("no PostgreSQL server found; tried " + ", ".join(tried))


def _server_user() -> pwd.struct_passwd | None:
    """The user the server runs as: None (this one) unless this is root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise NoServer("running as root and there is neither a 'postgres' nor a 'nobody' user to run the server as")


class LocalPostgres:
    """One server in a temporary directory; `with LocalPostgres() as pg: pg.url` (stopped and removed after)."""

    def __init__(self, binaries: ServerBinaries | None = None, *, database: str = DATABASE) -> None:
        self.binaries = binaries or find_server()
        self.database = database
        self.root: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket_dir(self) -> Path:
        assert self.root is not None
        return self.root / "sock"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.socket_dir}"

    def _demote(self) -> tuple[dict[str, object], pwd.struct_passwd | None]:
        user = _server_user()
        if user is None:
            return {}, None

        def become() -> None:
            os.setgid(user.pw_gid)
            os.setgroups([])
            os.setuid(user.pw_uid)

        return {"preexec_fn": become}, user

    def start(self, timeout: float = 60.0) -> LocalPostgres:
        # A short path: the socket's full name must fit in 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="tnrpg-", dir="/tmp"))
        data, log = self.root / "data", self.root / "server.log"
        self.socket_dir.mkdir()
        demote, user = self._demote()
        if user is not None:
            for path in (self.root, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
        env = {**os.environ, "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
        bindir = self.binaries.bindir
        try:
            done = subprocess.run(
                [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C"],
                capture_output=True,
                env=env,
                cwd=self.root,
                timeout=timeout,
                check=False,
                **demote,  # type: ignore[arg-type]
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            self.stop()
            raise NoServer(f"initdb from {bindir} did not run: {e}") from None
        if done.returncode != 0:
            self.stop()
            raise NoServer(f"initdb from {bindir} failed: {done.stderr.decode(errors='replace').strip()[-400:]}")
        settings = {
            "listen_addresses": "",
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",
            "full_page_writes": "off",
            "synchronous_commit": "off",
            "max_connections": "100",
            "max_pred_locks_per_transaction": "256",
        }
        command = [str(bindir / "postgres"), "-D", str(data)]
        for key, value in settings.items():
            command += ["-c", f"{key}={value}"]
        log_file = open(log, "wb")  # noqa: SIM115  (the server writes it for its whole life)
        if user is not None:
            os.chown(log, user.pw_uid, user.pw_gid)
        try:
            self.process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root,
                **demote,  # type: ignore[arg-type]
            )
        finally:
            log_file.close()
        deadline = time.monotonic() + timeout
        while not (self.socket_dir / ".s.PGSQL.5432").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace")[-600:]
                self.stop()
                raise NoServer(f"postgres from {bindir} did not start: {text.strip()}")
            time.sleep(0.05)
        self._create_database(deadline)
        return self

    def _create_database(self, deadline: float) -> None:
        import psycopg

        while True:
            try:
                with psycopg.connect(
                    host=str(self.socket_dir), user=SUPERUSER, dbname="postgres", autocommit=True
                ) as conn:
                    conn.execute(f'CREATE DATABASE "{self.database}"')
                return
            except psycopg.OperationalError as e:  # still starting up
                if time.monotonic() > deadline:
                    self.stop()
                    raise NoServer(f"the local PostgreSQL did not accept connections: {e}") from None
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        """Another empty database on this server; its URL."""
        import psycopg

        with psycopg.connect(host=str(self.socket_dir), user=SUPERUSER, dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: active transactions rolled back), then the directory is removed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> LocalPostgres:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
