"""`continuum flower` serves our app behind basic auth taken from the environment."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.integration.distributed.harness import REPO, wait_for
from tests.support.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _get(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_flower_requires_the_configured_basic_auth(dist_settings, monkeypatch, tmp_path):
    port = free_port()
    monkeypatch.setenv("CONTINUUM_FLOWER_BASIC_AUTH", "ops:flower-test-password")
    log = open(tmp_path / "flower.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", "from scheduler.cli import main; main()", "flower",
                             "--port", str(port), "--address", "127.0.0.1"],
                            cwd=REPO, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/") != 0, 60, "flower to listen")
        assert _get(f"http://127.0.0.1:{port}/") == 401
        assert _get(f"http://127.0.0.1:{port}/", "ops:wrong") == 401
        assert _get(f"http://127.0.0.1:{port}/", "ops:flower-test-password") == 200
        # The password never appears on the command line (visible to every user in `ps`).
        assert "flower-test-password" not in " ".join(proc.args)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        log.close()


def test_flower_refuses_to_start_without_auth_in_distributed_mode(dist_settings):
    result = subprocess.run([sys.executable, "-c", "from scheduler.cli import main; main()", "flower"],
                            cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "CONTINUUM_FLOWER_BASIC_AUTH" in result.stdout + result.stderr
