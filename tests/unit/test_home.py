"""The embedded home is private (issue 9): folders 0700, database and log files 0600."""

from __future__ import annotations

import os
import stat

from common.db import create_db_engine
from common.home import ensure_private_dir, ensure_private_file, open_private_append


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_folders_are_0700_and_an_existing_home_is_tightened_only_when_asked(tmp_path):
    nested = ensure_private_dir(tmp_path / "a" / "b")
    assert _mode(tmp_path / "a") == 0o700 and _mode(nested) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    ensure_private_dir(shared)
    assert _mode(shared) == 0o755  # a folder the user chose for something else is left alone
    ensure_private_dir(shared, tighten=True)
    assert _mode(shared) == 0o700


def test_files_are_created_0600_and_existing_content_is_kept(tmp_path):
    path = ensure_private_file(tmp_path / "f")
    assert _mode(path) == 0o600
    path.write_text("kept")
    ensure_private_file(path)
    assert path.read_text() == "kept"
    with open_private_append(tmp_path / "logs" / "worker.log") as log:
        log.write(b"line\n")
    assert _mode(tmp_path / "logs" / "worker.log") == 0o600 and _mode(tmp_path / "logs") == 0o700


def test_the_sqlite_database_and_its_wal_files_are_0600(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'home' / 'continuum.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    files = [p for p in (tmp_path / "home").iterdir() if p.name.startswith("continuum.db")]
    assert {p.name for p in files} >= {"continuum.db"}
    assert all(_mode(p) == 0o600 for p in files), {p.name: oct(_mode(p)) for p in files}
    engine.dispose()
