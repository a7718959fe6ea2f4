"""A throwaway PostgreSQL server from the local binaries, for tests that need one of their own
(the shared server on 5432 must not be stopped under other tests)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

import psycopg


class Unavailable(Exception):
    """No throwaway server can be started here; the message says why (tests skip with it)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ThrowawayPostgres:
    """initdb in a temporary directory, then start/stop at will; ``close`` removes everything."""

    def __init__(self) -> None:
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not binaries:
            raise Unavailable("no /usr/lib/postgresql/*/bin to start a throwaway PostgreSQL from")
        self.as_user: list[str] = []
        user = None
        if os.geteuid() == 0:  # initdb refuses to run as root
            if shutil.which("runuser") is None:
                raise Unavailable("a throwaway PostgreSQL needs runuser to avoid running as root")
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("a throwaway PostgreSQL needs a non-root user 'postgres'") from None
            self.as_user = ["runuser", "-u", "postgres", "--"]
        # Not pytest's tmp_path: the postgres user cannot enter root's private directories.
        self.directory = tempfile.mkdtemp(prefix="coby-pg-")
        if user is not None:
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        self.bin_dir, self.port = binaries[-1], free_port()
        self.data = os.path.join(self.directory, "data")
        try:
            self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust")
            self.start()
            with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
                connection.execute("CREATE DATABASE test")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, psycopg.Error) as error:
            self.close()
            raise Unavailable(f"a throwaway PostgreSQL did not start: {error}") from error

    def _run(self, tool: str, *arguments: str) -> None:
        subprocess.run([*self.as_user, f"{self.bin_dir}/{tool}", *arguments], check=True, capture_output=True,
                       timeout=60)

    def url(self, database: str = "test") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        # -l: the server must not inherit our pipes, or run() waits for it to exit
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.directory, "log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        """Like a crash: no checkpoint, every connection cut."""
        self._run("pg_ctl", "-D", self.data, "-m", "immediate", "stop")

    def close(self) -> None:
        subprocess.run([*self.as_user, f"{self.bin_dir}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(self.directory, ignore_errors=True)
