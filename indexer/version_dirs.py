"""The file layout of the faiss store: one directory per version, switched in atomically.

    INDEX_DIR/NAME/versions/v000007/   manifest.json, images.faiss, captions.faiss, *_vectors.npy, *_ids.npy
    INDEX_DIR/NAME/CURRENT             "v000007": the version the app serves

A build writes into `versions/.tmp-*`, renames it to its final name (atomic on one file system)
and then replaces CURRENT with `os.replace` (atomic too). A crash at any point leaves CURRENT
naming a complete earlier version; stale temporary directories are removed by the next build.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from indexer.vector_store import check_index_name

POINTER = "CURRENT"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class StoredVersion:
    name: str
    number: int
    directory: Path

    @property
    def manifest(self) -> dict:
        return json.loads((self.directory / MANIFEST).read_text())


def version_dirname(version: int) -> str:
    return f"v{version:06d}"


def index_root(index_dir: Path, name: str) -> Path:
    return Path(index_dir) / check_index_name(name)


def current_version(index_dir: Path, name: str) -> StoredVersion | None:
    """The version CURRENT points at, or None before the first build."""
    pointer = index_root(index_dir, name) / POINTER
    if not pointer.is_file():
        return None
    dirname = pointer.read_text().strip()
    directory = index_root(index_dir, name) / "versions" / dirname
    if not (directory / MANIFEST).is_file():
        raise FileNotFoundError(f"{pointer} names {dirname}, which has no {MANIFEST}")
    return StoredVersion(name, int(dirname.removeprefix("v")), directory)


def pointer_stamp(index_dir: Path, name: str) -> tuple[int, int] | None:
    """(inode, mtime) of CURRENT: the cheap check an app polls before reloading. Every switch
    writes a new file, so the inode changes even when two switches share a clock tick."""
    try:
        stat = (index_root(index_dir, name) / POINTER).stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def versions_on_disk(index_dir: Path, name: str) -> list[int]:
    """Complete (published) versions present, oldest first."""
    folder = index_root(index_dir, name) / "versions"
    if not folder.is_dir():
        return []
    return sorted(int(p.name[1:]) for p in folder.glob("v*") if p.name[1:].isdigit() and (p / MANIFEST).is_file())


def remove_abandoned_builds(index_dir: Path, name: str) -> list[str]:
    """Remove the temporary directories of builds killed before they could clean up (kill -9, a
    power cut). Only call it holding the build lock: then no live build owns one."""
    versions = index_root(index_dir, name) / "versions"
    stale = sorted(versions.glob(".tmp-*")) if versions.is_dir() else []
    for directory in stale:
        shutil.rmtree(directory, ignore_errors=True)
    return [directory.name for directory in stale]


def start_build(index_dir: Path, name: str) -> Path:
    """A fresh temporary directory for a build."""
    versions = index_root(index_dir, name) / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".tmp-", dir=versions))


def abandon_build(temporary: Path) -> None:
    shutil.rmtree(temporary, ignore_errors=True)


def publish(index_dir: Path, name: str, temporary: Path, version: int) -> StoredVersion:
    """Rename a finished build to its version directory (not yet current)."""
    final = index_root(index_dir, name) / "versions" / version_dirname(version)
    if final.exists():  # left by a build that crashed after publishing but before switching
        shutil.rmtree(final)
    _fsync_dir_contents(temporary)
    os.rename(temporary, final)
    _fsync_dir(final.parent)  # the rename itself must reach the disk before CURRENT can name it
    return StoredVersion(name, version, final)


def switch_current(index_dir: Path, name: str, version: int) -> None:
    """Point CURRENT at `version` atomically."""
    root = index_root(index_dir, name)
    if not (root / "versions" / version_dirname(version) / MANIFEST).is_file():
        raise FileNotFoundError(f"cannot switch {name} to missing version {version_dirname(version)}")
    temporary = root / (POINTER + ".tmp")
    with open(temporary, "w") as handle:
        handle.write(version_dirname(version) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, root / POINTER)
    _fsync_dir(root)


def remove_version(index_dir: Path, name: str, version: int) -> None:
    """Delete a version's directory (the caller makes sure it is not the current one)."""
    shutil.rmtree(index_root(index_dir, name) / "versions" / version_dirname(version), ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_dir_contents(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
