"""Atomic checkpoints, safe loading, and resume giving the same weights."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

import common
import dae
from conftest import ROOT, run_script, train

TINY = ["--filters", "4", "--latent-dim", "4", "--batch-size", "32", "--gmm-components", "2",
        "--device", "cpu"]


def test_crash_during_a_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / common.CHECKPOINT
    common.atomic_save({"epoch": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def crash_half_way(obj, file, *args, **kwargs):
        with open(file, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(OSError):
        common.atomic_save({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    state = common.load_checkpoint(tmp_path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_unreadable_or_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(common.UserError, match="has no checkpoint.pt"):
        common.load_checkpoint(tmp_path)
    (tmp_path / common.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(common.UserError, match="could not be read"):
        common.load_checkpoint(tmp_path)


def only_run(out_dir):
    (folder,) = out_dir.iterdir()
    return folder


def assert_same_weights(a, b):
    for state_a, state_b in ((a["model"], b["model"]), (a["samplers"], b["samplers"])):
        assert state_a.keys() == state_b.keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["samplers"]["gmm"]["means"], b["samplers"]["gmm"]["means"])


def test_two_epochs_equal_one_plus_resume_plus_one(tmp_path):
    """Resume restores weights, optimizer and random state: decoder-input noise draws
    random numbers, so a wrong RNG state would show."""
    flags = dict(dataset="fake", filters=4, latent_dim=4, batch_size=32, gmm_components=2,
                 noise_std=0.1)
    full = train(dae, tmp_path / "full", epochs=2, **flags)
    half = train(dae, tmp_path / "half", epochs=1, **flags)
    dae.train(dae.Args(resume=str(half), epochs=2), {"resume", "epochs"})
    a, b = common.load_checkpoint(full), common.load_checkpoint(half)
    assert a["epoch"] == b["epoch"] == 1
    assert_same_weights(a, b)
    assert len((half / "log.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_killed_mid_epoch_and_resumed_ends_like_uninterrupted(tmp_path):
    data = ["--dataset", "digits", *TINY, "--epochs", "3"]
    uninterrupted = run_script("dae.py", *data, "--out-dir", tmp_path / "a")
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    process = subprocess.Popen([sys.executable, "dae.py", *data, "--out-dir", tmp_path / "b"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((tmp_path / "b").glob("*/checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into the second epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    folder = only_run(tmp_path / "b")
    assert common.load_checkpoint(folder)["epoch"] == 0  # killed during epoch 2
    resumed = run_script("dae.py", "--resume", folder)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(common.load_checkpoint(only_run(tmp_path / "a")),
                        common.load_checkpoint(folder))
    epochs = [json.loads(line)["epoch"] for line in (folder / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path):
    """Epoch 1 is the warm-up at 1e-4; epoch 2 runs at lr 1e28 and the loss turns NaN."""
    with pytest.raises(common.UserError, match="the loss became nan in epoch 2"):
        train(dae, tmp_path, dataset="fake", filters=4, latent_dim=4, batch_size=32, epochs=2,
              lr=1e30)
    state = common.load_checkpoint(only_run(tmp_path / "runs"))
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_ctrl_c_says_which_checkpoint_is_kept(tmp_path, capsys, monkeypatch):
    def interrupted(args, given):
        common.LAST_SAVED[:] = [tmp_path, "the checkpoint of epoch 5", "--resume"]  # save_epoch
        raise KeyboardInterrupt

    monkeypatch.setattr(common, "LAST_SAVED", [])
    monkeypatch.setattr(sys, "argv", ["dae.py"])
    with pytest.raises(SystemExit) as stop:
        common.cli(interrupted, dae.Args, "")
    assert stop.value.code == 130
    assert capsys.readouterr().err.strip() == (
        f"interrupted: the checkpoint of epoch 5 in {tmp_path} is kept; "
        f"continue with --resume {tmp_path}")
