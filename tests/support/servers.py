"""Start real Postgres, Redis and an S3-compatible server (moto) on loopback, in temp dirs.

Each server binds a free port on 127.0.0.1 and is stopped at exit. Nothing here is a mock: these are
the same server programs production talks to (moto implements the S3 wire protocol).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _terminate(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    """Stop a server process politely, then firmly."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
            return str(candidate)
        raise RuntimeError(f"{name} not found on PATH: install it (see .ci/run)")
    return path


@dataclass
class PostgresServer:
    """A throwaway Postgres cluster. `url(db)` gives a psycopg SQLAlchemy URL."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="continuum-pg-")))
    port: int = field(default_factory=free_port)
    user: str = "continuum"
    password: str = "pg-test-secret-not-default"

    def start(self) -> "PostgresServer":
        data = self.root / "data"
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        chown_for_postgres(self.root)  # initdb runs as the postgres user when we are root
        run_as = _demote_kwargs()
        subprocess.run(
            [_binary("initdb"), "-D", str(data), "-U", self.user, f"--pwfile={pwfile}", "-A", "md5", "--no-sync"],
            check=True,
            capture_output=True,
            **run_as,
        )
        subprocess.run(
            [
                _binary("pg_ctl"), "-D", str(data), "-l", str(self.root / "log"), "-w", "-t", "60",
                "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=200",
                "start",
            ],
            check=True,
            capture_output=True,
            **run_as,
        )
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [_binary("pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop"],
            capture_output=True,
            **_demote_kwargs(),
        )
        shutil.rmtree(self.root, ignore_errors=True)


def _demote_kwargs() -> dict:
    """Postgres refuses to run as root: drop to the `nobody`-like `postgres` user when we are root."""
    if os.geteuid() != 0:
        return {}
    import pwd

    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
            break
        except KeyError:
            continue
    else:
        raise RuntimeError("running as root and no 'postgres' user exists: `useradd postgres`")

    def demote() -> None:
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    return {"preexec_fn": demote}


def chown_for_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        import pwd

        for name in ("postgres", "nobody"):
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            os.chown(path, entry.pw_uid, entry.pw_gid)
            for child in path.rglob("*"):
                os.chown(child, entry.pw_uid, entry.pw_gid)
            return


@dataclass
class RedisServer:
    """redis-server with append-only persistence (like production), on a free loopback port."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="continuum-redis-")))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    # A password, as in production: distributed mode refuses a Redis URL without one.
    password: str = "redis-test-secret-not-default"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            [
                _binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
                "--requirepass", self.password, "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def stop(self, cleanup: bool = True) -> None:
        _terminate(self.proc)
        self.proc = None
        if cleanup:
            shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start again on the same port and data dir (the AOF brings the queues back)."""
        self.stop(cleanup=False)
        self.start()


@dataclass
class S3Server:
    """moto's S3-compatible HTTP server on loopback (real S3 wire protocol, in-memory state)."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    access_key: str = "test-access-key"
    secret_key: str = "test-secret-key-not-default"
    region: str = "us-east-1"

    def start(self) -> "S3Server":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        _terminate(self.proc)
