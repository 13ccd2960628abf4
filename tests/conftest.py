"""Shared test set-up: the repository on sys.path, no network, a helper to run a script."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = Path(__file__).resolve().parent / "offline"
sys.path.insert(0, str(ROOT))

# Block the network in this process too (the same file guards the subprocesses).
_spec = importlib.util.spec_from_file_location("offline_guard", OFFLINE / "sitecustomize.py")
_spec.loader.exec_module(importlib.util.module_from_spec(_spec))


def script_env() -> dict:
    """The environment of a script the tests start: offline, no GPU."""
    path = os.pathsep.join(filter(None, [str(OFFLINE), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "",
            "PYTHONPATH": path}


def run_script(*argv, timeout=600):
    """Run a script as a user would, offline; returns the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, env=script_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory):
    """A TORCH_HOME holding random FID-Inception, AlexNet and VGG19 weights under the file
    names pytorch-fid and torchvision (for LPIPS and the perceptual loss) look for."""
    from fakes import write_random_alexnet, write_random_inception, write_random_vgg19

    home = tmp_path_factory.mktemp("torch_home")
    write_random_inception(home)
    write_random_alexnet(home)
    write_random_vgg19(home)
    return home


def run_with_weights(torch_home, *argv):
    """A script as a subprocess, with the random network weights of `torch_home`."""
    with mock.patch.dict("os.environ", {"TORCH_HOME": str(torch_home)}):
        return run_script(*argv)


def run_eval(torch_home, *argv):
    """eval.py as a subprocess, with the random Inception weights of `torch_home`."""
    return run_with_weights(torch_home, "eval.py", *argv)
