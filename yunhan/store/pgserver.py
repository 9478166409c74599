"""Throwaway PostgreSQL clusters for tests, benches and the lab.

    with PgServer(Path("/tmp/t1a2b-pg"), prefix="t1a2b") as pg:
        url = pg.create_database("t1a2b_store")   # "postgresql+psycopg://postgres@/..."

A cluster lives entirely in one directory: the data (`data/`), the log (`postgres.log`) and
the unix socket the server listens on. It listens on nothing else (listen_addresses = ''),
so it opens no port and only local processes that can reach the directory connect to it;
they connect as the superuser "postgres" without a password (trust, on the socket only).

PostgreSQL refuses to run as root: as root the directory is owned by, and the server runs
as, the `postgres` system user (the Debian package creates it); as anyone else, as that
user. Everything carries the caller's prefix (the directory name, which the server's
command line shows, and `cluster_name`, which every server process shows in its title),
and a marker file names the owner process, so `sweep(prefix)` can stop and remove what a
killed run left behind without touching a live run's cluster.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from sqlalchemy import URL, create_engine, make_url, text
from sqlalchemy.pool import NullPool

from yunhan.errors import PgServerError

SUPERUSER = "postgres"
MARKER = ".yunhan-pgserver"
# sockaddr_un.sun_path is 108 bytes with the terminating NUL.
_MAX_SOCKET_PATH = 107
_DBNAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def find_bindir() -> Path:
    """The directory of initdb, pg_ctl and postgres: $YUNHAN_PG_BINDIR, else the newest
    /usr/lib/postgresql/<version>/bin (Debian keeps them off PATH), else PATH."""
    env = os.environ.get("YUNHAN_PG_BINDIR")
    if env:
        return Path(env)
    found = sorted(
        (p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
        key=lambda b: int(b.parent.name) if b.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PgServerError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: run scripts/install.sh "
        "(installs Debian's postgresql package) or set YUNHAN_PG_BINDIR",
    )


def create_database(admin_url: str, name: str) -> str:
    """Create database `name` on the server of `admin_url`; returns the URL of the new one.

    `name` must be a plain lowercase identifier (it is also what a sweep or a person greps).
    """
    _check_dbname(name)
    _admin_exec(admin_url, f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database `name` if it exists, disconnecting whoever still uses it."""
    _check_dbname(name)
    _admin_exec(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _check_dbname(name: str) -> None:
    if not _DBNAME.match(name):
        raise PgServerError(
            f"bad database name {name!r}: use 1-63 characters of a-z, 0-9 and _", name=name
        )


def _admin_exec(admin_url: str, sql: str) -> None:
    # CREATE/DROP DATABASE cannot run inside a transaction block.
    engine = create_engine(admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


class PgServer:
    """One PostgreSQL cluster in `directory`, started by `start()`, removed by `stop()`.

    `directory` must not exist yet (its parent must, and must be traversable by the
    `postgres` user when running as root). `fsync=False` also turns off
    synchronous_commit and full_page_writes: fine for tests and benches (a crash may lose
    the cluster, which is thrown away anyway), never for data you keep.
    """

    def __init__(
        self,
        directory: Path,
        *,
        prefix: str,
        fsync: bool = False,
        port: int = 5432,
        max_connections: int = 200,
        bindir: Path | None = None,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.prefix = prefix
        self.fsync = fsync
        self.port = port
        self.max_connections = max_connections
        self._bindir = bindir
        socket = self.directory / f".s.PGSQL.{port}"
        if len(str(socket)) > _MAX_SOCKET_PATH:
            raise PgServerError(
                f"{socket} is longer than a unix socket path may be ({_MAX_SOCKET_PATH}); "
                "choose a shorter directory",
                directory=str(self.directory),
            )
        self._started = False

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        """A SQLAlchemy URL (psycopg 3 driver) for database `dbname` of this cluster."""
        return URL.create(
            "postgresql+psycopg",
            username=SUPERUSER,
            database=dbname,
            query={"host": str(self.directory), "port": str(self.port)},
        ).render_as_string(hide_password=False)

    def create_database(self, name: str) -> str:
        """Create database `name`; returns its URL."""
        return create_database(self.url(), name)

    def drop_database(self, name: str) -> None:
        drop_database(self.url(), name)

    def start(self) -> None:
        """initdb and start the server; returns when it accepts connections.

        On failure everything made so far is removed and PgServerError carries the tail of
        initdb's output or of the server log.
        """
        if self._started:
            return
        bindir = self._bindir or find_bindir()
        self.directory.mkdir(mode=0o700)
        self._started = True
        try:
            (self.directory / MARKER).write_text(
                json.dumps({"prefix": self.prefix, "owner_pid": os.getpid()}) + "\n"
            )
            _chown_to_server_user(self.directory)
            self._run(
                [
                    str(bindir / "initdb"),
                    "-D", str(self.data_dir),
                    "-U", SUPERUSER,
                    "-E", "UTF8",
                    "--locale=C",
                    "--auth-local=trust",
                    "--auth-host=reject",
                    *([] if self.fsync else ["--no-sync"]),
                ],
                what="initdb",
            )  # fmt: skip
            with (self.data_dir / "postgresql.conf").open("a") as conf:
                conf.write(self._settings())
            self._run(
                [
                    str(bindir / "pg_ctl"), "start", "-w", "-t", "60", "-s",
                    "-D", str(self.data_dir), "-l", str(self.log_path),
                ],
                what="pg_ctl start",
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise

    def _settings(self) -> str:
        lines = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.directory}'",
            "port": str(self.port),
            "cluster_name": f"'{self.prefix}-pg'",
            "max_connections": str(self.max_connections),
            "fsync": "on" if self.fsync else "off",
            "synchronous_commit": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
        }
        body = "".join(f"{k} = {v}\n" for k, v in lines.items())
        return f"\n# yunhan.store.pgserver ({self.prefix})\n{body}"

    def stop(self) -> None:
        """Fast shutdown (clients are disconnected, nothing waits for them), then remove the
        directory. Idempotent; an unresponsive server is killed."""
        if not self._started:
            return
        _stop_cluster(self.data_dir, self._bindir)
        shutil.rmtree(self.directory, ignore_errors=True)
        self._started = False

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, cmd: list[str], *, what: str) -> None:
        try:
            proc = _run_as_server_user(cmd, cwd=self.directory)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PgServerError(f"{what} could not run: {exc}{self._log_tail()}") from exc
        if proc.returncode != 0:
            raise PgServerError(
                f"{what} failed (exit {proc.returncode}): {_tail(proc.stdout + proc.stderr)}"
                f"{self._log_tail()}",
                directory=str(self.directory),
            )

    def _log_tail(self) -> str:
        try:
            return f"\nserver log {self.log_path}:\n{_tail(self.log_path.read_text())}"
        except OSError:
            return ""


def sweep(prefix: str, base: Path | None = None) -> list[Path]:
    """Stop and remove clusters under `base` (the temp dir by default) that PgServer made
    with `prefix` and whose owner process is gone. Returns the directories removed."""
    removed = []
    for marker in sorted((base or Path(tempfile.gettempdir())).glob(f"{prefix}*/{MARKER}")):
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        if info.get("prefix") != prefix or _alive(int(info.get("owner_pid", 0))):
            continue
        _stop_cluster(marker.parent / "data", None, mode="immediate")
        shutil.rmtree(marker.parent, ignore_errors=True)
        removed.append(marker.parent)
    return removed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_cluster(data_dir: Path, bindir: Path | None, mode: str = "fast") -> None:
    pidfile = data_dir / "postmaster.pid"
    if not pidfile.exists():
        return
    try:
        pg_ctl = str((bindir or find_bindir()) / "pg_ctl")
        for m in (mode, "immediate"):
            cmd = [pg_ctl, "stop", "-w", "-t", "30", "-s", "-m", m, "-D", str(data_dir)]
            if _run_as_server_user(cmd, cwd=data_dir.parent).returncode == 0:
                return
    except (OSError, subprocess.TimeoutExpired, PgServerError):
        pass
    # pg_ctl could not stop it: kill the postmaster; its children exit when it does.
    try:
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass


def _server_user() -> pwd.struct_passwd | None:
    """The user the server runs as when we are root; None when we run it as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PgServerError(
            "PostgreSQL refuses to run as root and there is no 'postgres' user: "
            "run scripts/install.sh (Debian's postgresql package creates it)"
        ) from exc


def _chown_to_server_user(path: Path) -> None:
    user = _server_user()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)
        os.chown(path / MARKER, user.pw_uid, user.pw_gid)


def _run_as_server_user(cmd: list[str], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    user = _server_user()
    # PG* variables of the caller (PGDATA, PGPORT, PGHOST) would override our arguments.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if user is not None:
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=env,
        user=user.pw_uid if user else None,
        group=user.pw_gid if user else None,
        extra_groups=[] if user else None,
        # Its own session: a Ctrl-C at the terminal must not take the server down under the
        # tests before their teardown has run.
        start_new_session=True,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
