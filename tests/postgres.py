"""A throw-away PostgreSQL server for tests: a fresh cluster in a temporary folder, on a unix socket.

Uses IMGSEARCH_TEST_POSTGRES_URL when set; otherwise starts one from the Debian `postgresql`
binaries (run as the `postgres` user when the tests run as root, since PostgreSQL refuses root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def postgres_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextmanager
def temporary_postgres() -> Iterator[str]:
    """Yield a SQLAlchemy URL of an empty database; the server is stopped and removed afterwards."""
    if os.environ.get("IMGSEARCH_TEST_POSTGRES_URL"):
        yield os.environ["IMGSEARCH_TEST_POSTGRES_URL"]
        return
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL is not installed (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="imgsearch-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    data = folder / "data"
    run = dict(check=True, capture_output=True, timeout=120)
    subprocess.run(_as_user([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]), **run)
    options = f"-k {folder} -c listen_addresses='' -p 5499 -c fsync=off"
    subprocess.run(_as_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l",
                             str(folder / "log"), "start"]), **run)
    try:
        subprocess.run(_as_user([str(bin_dir / "createdb"), "-h", str(folder), "-p", "5499", "-U", "postgres",
                                 "imgsearch_test"]), **run)
        yield f"postgresql+psycopg://postgres@/imgsearch_test?host={folder}&port=5499"
    finally:
        subprocess.run(_as_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
