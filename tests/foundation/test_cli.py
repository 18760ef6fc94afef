"""The `rillet` command line as a user runs it: a real subprocess, a real database, a real server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RILLET = str(Path(sys.executable).parent / "rillet")


def run(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RILLET, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=env["HOME"])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("RILLET_")}
    e.update(HOME=str(tmp_path), RILLET_DATA_DIR=str(tmp_path / "data"), HF_HUB_OFFLINE="1", COLUMNS="200")
    return e


def test_help_lists_the_commands(env: dict[str, str]) -> None:
    """The Commands box of --help names exactly the commands the README documents, each with its summary."""
    out = run(["--help"], env).stdout
    box = out[out.index("Commands"):]
    listed = {row.split()[1]: " ".join(row.split()[2:-1]) for row in box.splitlines()[1:] if row.startswith("│")}
    assert set(listed) == {"config", "doctor", "serve", "chat", "convert", "index", "search", "collections", "db",
                           "users"}
    assert listed["db"] == "Database schema." and listed["serve"] == "Start the web UI."


def test_config_shows_environment_overrides(env: dict[str, str]) -> None:
    env["RILLET_PORT"] = "7999"
    out = run(["config"], env).stdout
    assert "7999" in out and "RILLET_PORT" in out and str(Path(env["RILLET_DATA_DIR"])) in out


def test_db_upgrade_creates_the_sqlite_file(env: dict[str, str]) -> None:
    result = run(["db", "upgrade"], env)
    assert result.returncode == 0, result.stderr
    assert (Path(env["RILLET_DATA_DIR"]) / "rillet.db").stat().st_size > 0


def test_doctor_names_each_component_and_flags_a_bad_database(env: dict[str, str]) -> None:
    result = run(["doctor"], env)
    for name in ("python", "torch", "cuda", "triton", "faiss", "model file", "database"):
        assert name in result.stdout
    assert result.returncode == 0, result.stdout
    env["RILLET_DATABASE_URL"] = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    bad = run(["doctor"], env)
    assert bad.returncode == 1
    assert "RILLET_DATABASE_URL" in bad.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_http(env: dict[str, str]) -> None:
    port = _free_port()
    proc = subprocess.Popen([RILLET, "serve", "--port", str(port)], env=env, cwd=env["HOME"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                    assert resp.status == 200
                    assert "Rillet" in resp.read().decode()
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "server did not answer in 120 s"
                time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose (Debian package) is not installed; scripts/ensure-test-tools.sh installs it")
def test_docker_compose_file_validates() -> None:
    result = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose (Debian package) is not installed; scripts/ensure-test-tools.sh installs it")
def test_docker_compose_replicas_profile_validates_and_the_proxy_reaches_every_replica() -> None:
    """The `replicas` profile: every app service on the one database with a data volume of its own, and the
    proxy's Caddyfile naming exactly those services, with a sticky cookie."""
    import re

    import yaml

    result = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "--profile", "replicas",
                             "config"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    apps = {name: s for name, s in services.items() if "RILLET_DATABASE_URL" in s.get("environment", {})}
    assert len(apps) >= 2
    assert len({s["environment"]["RILLET_DATABASE_URL"] for s in apps.values()}) == 1
    data = [next(v for v in s["volumes"] if v.endswith(":/data:rw") or v.endswith(":/data")) for s in apps.values()]
    assert len(set(data)) == len(apps)  # each replica caches its indexes in its own volume
    assert services["db"]["image"].startswith("pgvector/pgvector:")
    proxy = services["proxy"]
    assert proxy["image"].startswith("caddy:")
    mount = next(v for v in proxy["volumes"] if v.split(":")[1] == "/etc/caddy/Caddyfile")
    caddyfile = Path(mount.split(":")[0]).read_text()
    upstreams = re.search(r"reverse_proxy\s+([^{]+)\{", caddyfile).group(1).split()
    assert sorted(upstreams) == sorted(f"{name}:{s['environment']['RILLET_PORT']}" for name, s in apps.items())
    assert re.search(r"lb_policy\s+cookie", caddyfile)
