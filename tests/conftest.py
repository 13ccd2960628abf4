"""Shared test set-up: the repository on sys.path, no network, helpers that train and run
the command line in this process, a `slow` marker, and a check that the suite leaves the
checkout as it found it.

`python -m pytest -q` runs everything but the tests marked slow; `python -m pytest -m slow`
runs those (more torchrun launches, killed runs, every method under two processes)."""
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


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: left out of the default run; pytest -m slow")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # -n 2: a core per worker, not two each
        import torch

        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"  # and for the scripts a test starts


def pytest_collection_modifyitems(config, items):
    if config.option.markexpr:  # -m given: pytest selects by it
        return
    slow = [item for item in items if "slow" in item.keywords]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if "slow" not in item.keywords]


def _checkout_state():
    """Every file git would report, ignored ones included, but Python's own caches."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None  # not a git checkout
    return sorted(line for line in out.stdout.splitlines()
                  if "__pycache__" not in line and ".pytest_cache" not in line)


@pytest.fixture(scope="session", autouse=True)
def fake_data_set():
    """dataset="fake" in this process: fakes.fake_images, 256 training and 64 test images of
    coloured blobs (a data set of the tests, not a --dataset choice of the scripts); the IAE
    takes CIFAR-10's official settings for it, as for any image folder."""
    import common
    import iae_lde
    from fakes import fake_images

    load = common.load_images

    def with_fake(name, root, split, image_size=0, crop=0):
        if name != "fake":
            return load(name, root, split, image_size, crop)
        return fake_images(split, image_size or 32)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(common, "load_images", with_fake)
        patch.setitem(iae_lde.PER_DATASET, "fake", iae_lde.PER_DATASET["cifar10"])
        yield


@pytest.fixture(scope="session")
def fake_folder(tmp_path_factory):
    """The fake images as an image folder, for the scripts the tests start."""
    from fakes import write_fake_folder

    return write_fake_folder(tmp_path_factory.mktemp("fake"))


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean():
    """Tests write only under their temporary folders, never into the repository."""
    before = _checkout_state()
    yield
    after = _checkout_state()
    if before is not None and after is not None:
        assert after == before, f"the tests wrote into the checkout: {set(after) - set(before)}"


# The defaults of the options every method file shares, as the README documents them.
RUN_OPTIONS = dict(data_root="data", seed=0, device="auto", compile=False, sync_bn=False,
                   out_dir="runs", resume="")


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

    if os.environ.get("SWEEP_TORCH_HOME"):  # tests/sweep.py writes one for all its runs
        return Path(os.environ["SWEEP_TORCH_HOME"])
    home = tmp_path_factory.mktemp("torch_home")
    write_random_inception(home)
    write_random_alexnet(home)
    write_random_vgg19(home)
    return home


@pytest.fixture
def weights(torch_home, monkeypatch):
    """The random pretrained weights of `torch_home`, for code run in this process."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return torch_home


def run_with_weights(torch_home, *argv):
    """A script as a subprocess, with the random network weights of `torch_home`."""
    with mock.patch.dict("os.environ", {"TORCH_HOME": str(torch_home)}):
        return run_script(*argv)


def train(module, tmp_path, **settings):
    """A run of a method file's own train(), in this process, on the CPU, writing only under
    tmp_path; `settings` are its Args fields (as if typed). Returns what train returns."""
    args = module.Args(**{"device": "cpu", "out_dir": str(tmp_path / "runs"),
                          "data_root": str(tmp_path / "data"), **settings})
    return module.train(args, set(settings))


def cli_error(module, argv, capsys) -> str:
    """A method file's command line (common.cli) run in this process with `argv`: asserts it
    exits non-zero without a traceback and returns its last line of stderr."""
    import common

    capsys.readouterr()
    with mock.patch.object(sys, "argv", [f"{module.__name__}.py", *map(str, argv)]):
        with pytest.raises(SystemExit) as stop:
            common.cli(module.main, module.Args, module.__doc__)
    err = capsys.readouterr().err
    assert stop.value.code not in (0, None), err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def recorded(monkeypatch, module, name: str) -> list:
    """What `module.name(...)` returns from now on, call by call (it still runs)."""
    calls, function = [], getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(function(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(module, name, spy)
    return calls


def log_records(folder):
    import json

    return [json.loads(line) for line in (Path(folder) / "log.jsonl").read_text().splitlines()]
