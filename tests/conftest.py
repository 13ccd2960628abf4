"""Shared test set-up: the repository on sys.path, no network, a helper to run a script."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach another machine fails at once: the suite never downloads."""
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family == socket.AF_UNIX or str(address[0]).startswith(("127.", "::1")):
            return real_connect(self, address)
        raise OSError(f"tests run offline: refused connection to {address}")

    monkeypatch.setattr(socket.socket, "connect", connect)


def run_script(*argv, timeout=600):
    """Run a method file as a user would; returns the CompletedProcess (text output)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
