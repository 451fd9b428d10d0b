"""The demo command end to end (small), and the compose file validated by docker compose."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.skipif(_compose_command() is None, reason="neither `docker compose` nor docker-compose is installed")
def test_compose_file_is_valid(tmp_path):
    (tmp_path / "gallery").mkdir()
    (tmp_path / "model.pt").write_bytes(b"")
    env = {"PATH": "/usr/bin:/bin", "GALLERY_DIR": str(tmp_path / "gallery"), "ENCODER": str(tmp_path / "model.pt")}
    done = subprocess.run([*_compose_command(), "-f", str(ROOT / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    for service in ("db:", "indexer:", "app:"):
        assert service in done.stdout
    with_gpu = subprocess.run([*_compose_command(), "-f", str(ROOT / "docker-compose.yml"), "--profile", "gpu",
                               "config", "--services"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert with_gpu.returncode == 0 and "app-gpu" in with_gpu.stdout
    with_milvus = subprocess.run([*_compose_command(), "-f", str(ROOT / "docker-compose.yml"), "--profile", "milvus",
                                  "config"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert with_milvus.returncode == 0, with_milvus.stderr
    for service in ("etcd:", "minio:", "milvus:", "indexer-milvus:", "app-milvus:"):
        assert service in with_milvus.stdout
    assert "VECTOR_STORE_URL: http://milvus:19530" in with_milvus.stdout and "healthz" in with_milvus.stdout


@pytest.mark.slow
def test_demo_generates_trains_and_indexes(tmp_path):
    done = subprocess.run([sys.executable, "-m", "app.cli", "demo", "--out", str(tmp_path / "demo"), "--count", "80",
                           "--epochs", "1", "--no-serve"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "[3/4] indexing the gallery" in done.stdout and "demo: version 1 is now current" in done.stdout
    assert (tmp_path / "demo" / "run" / "model_best.pt").is_file()
    assert (tmp_path / "demo" / "indexes" / "demo" / "CURRENT").is_file()
