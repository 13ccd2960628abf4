"""torchrun: a DDP step equal to one process's step, and a 2-process run killed and resumed
(what only torchrun can prove); marked slow: every method as 2 CPU processes (gloo) and the
one-line errors of a torchrun launch. (SyncBatchNorm is CUDA-only in torch; its flag is
checked here only for its CPU error.)"""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

import common
import dae
from conftest import ROOT, run_script, run_with_weights, script_env, train

TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
DIGITS = ["--dataset", "digits", "--batch-size", "64", "--device", "cpu"]


def epochs_logged(run):
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["epoch"] for r in records if "epoch" in r and r.get("stage") != "lde"]


@pytest.mark.slow
@pytest.mark.parametrize("script, flags", [
    ("dae.py", [*DIGITS, "--filters", "4", "--latent-dim", "4", "--gmm-components", "2"]),
    ("eae.py", [*DIGITS, "--filters", "4", "--latent-dim", "4", "--gmm-components", "2"]),
    ("rae.py", [*DIGITS, "--filters", "4", "--latent-dim", "4", "--gmm-components", "2",
                "--variant", "rae-gp"]),  # differentiates twice through DDP
    ("vae.py", [*DIGITS, "--filters", "4", "--latent-dim", "4", "--gmm-components", "2"]),
    ("iae_lde.py", [*DIGITS, "--filters", "8", "--latent-dim", "4", "--warmup-epochs", "1",
                    "--lde-components", "3", "--lde-epochs", "1", "--gmm-components", "2"]),
    ("deciphering.py", ["--dataset", "FAKE", "--widths", "8", "16", "32", "64", "--active", "1",
                        "2", "4", "--clusters", "4", "--latent-dim", "8", "--batch-size", "32",
                        "--lpips-size", "32", "--save-every", "1", "--device", "cpu"]),
])
def test_each_method_runs_as_two_processes(script, flags, tmp_path, torch_home, fake_folder):
    flags = [word for f in flags  # FAKE: the tests' images, as a folder
             for word in (["folder", "--data-root", fake_folder] if f == "FAKE" else [f])]
    result = run_with_weights(torch_home, *TORCHRUN, script, *flags, "--epochs", "2",
                              "--out-dir", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = tmp_path.iterdir()  # one run folder, made by rank 0
    assert epochs_logged(run) == [1, 2]  # rank 0 alone logs
    checkpoint = common.load_checkpoint(run)
    assert checkpoint["epoch"] == 1 and len(checkpoint["rng_per_process"]) == 2
    assert not torch.equal(checkpoint["rng_per_process"][0]["torch"],
                           checkpoint["rng_per_process"][1]["torch"])  # a stream per process
    if script != "deciphering.py":
        assert {"normal", "mvg", "gmm"} <= set(checkpoint["samplers"])  # fitted once
        assert (run / "samples_gmm.png").stat().st_size > 0
    else:
        assert len(checkpoint["patterns"]) == 256  # every image's pattern, not a shard's


def test_one_ddp_step_equals_one_process_step(tmp_path, fake_folder):
    """dae.py without batch norm: one step of a global batch of 256 split over 2 processes
    gives the weights of one process taking the 256 at once (that one in this process)."""
    flags = ["--dataset", "folder", "--data-root", fake_folder, "--filters", "4", "--latent-dim",
             "4", "--epochs", "1", "--batch-size", "256", "--no-batch-norm", "--gmm-components",
             "1", "--device", "cpu"]
    two = run_script(*TORCHRUN, "dae.py", *flags, "--out-dir", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    one_run = train(dae, tmp_path / "one", dataset="fake", filters=4, latent_dim=4, epochs=1,
                    batch_size=256, batch_norm=False, gmm_components=1)
    (two_run,) = (tmp_path / "two").iterdir()
    single, double = (common.load_checkpoint(r)["model"] for r in (one_run, two_run))
    torch.manual_seed(0)  # the initial weights of both runs (seed 0, rank 0)
    initial = dae.DAE(dae.Args(filters=4, latent_dim=4, batch_norm=False), 3, 32).state_dict()
    moved = max((single[k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-5  # the step changed the weights ...
    for name in single:  # ... and both runs by the same amount
        torch.testing.assert_close(double[name], single[name], atol=1e-7, rtol=1e-5)


@pytest.mark.slow
def test_killed_two_process_run_resumes_as_if_never_interrupted(tmp_path):
    # --noise-std: each process draws decoder-input noise from its own random stream, which
    # the checkpoint must keep per process for the resumed run to draw what it would have
    flags = [*DIGITS, "--filters", "4", "--latent-dim", "4", "--gmm-components", "2",
             "--flip", "--noise-std", "0.1", "--epochs", "4"]
    straight = run_script(*TORCHRUN, "dae.py", *flags, "--out-dir", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = subprocess.Popen([sys.executable, *TORCHRUN, "dae.py", *flags, "--out-dir",
                               str(tmp_path / "killed")], cwd=ROOT, env=script_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and killed.poll() is None:
        if list((tmp_path / "killed").glob("*/checkpoint.pt")):  # epoch 1 saved
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGTERM)  # as a scheduler stops a job: torchrun ends both workers
    killed.wait(timeout=120)
    (run,) = (tmp_path / "killed").iterdir()
    assert common.load_checkpoint(run)["epoch"] < 3  # it really stopped early
    resumed = run_script(*TORCHRUN, "dae.py", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (straight_run,) = (tmp_path / "straight").iterdir()
    expected, got = (common.load_checkpoint(r) for r in (straight_run, run))
    assert got["epoch"] == expected["epoch"] == 3
    for name, tensor in expected["model"].items():
        assert torch.equal(got["model"][name], tensor), name


def assert_workers_said(result, message):
    """Each worker's one-line error, and no traceback of ours (torchrun adds its own
    failure report, with the launcher's traceback, whenever a worker exits non-zero)."""
    assert result.returncode != 0
    assert result.stderr.count(f"error: {message}") == 2, result.stderr[-3000:]
    assert not any(f'{name}", line' in result.stderr for name in ("dae.py", "common.py"))


@pytest.mark.slow
def test_sync_bn_on_cpu_is_a_one_line_error(tmp_path):
    result = run_script(*TORCHRUN, "dae.py", *DIGITS, "--filters", "4", "--epochs", "1",
                        "--sync-bn", "--out-dir", tmp_path)
    assert_workers_said(result, "--sync-bn needs CUDA")
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # no run folder left behind


@pytest.mark.slow
def test_global_batch_must_split_evenly(tmp_path):
    result = run_script(*TORCHRUN, "dae.py", *DIGITS[:2], "--batch-size", "63", "--epochs",
                        "1", "--device", "cpu", "--out-dir", tmp_path)
    assert_workers_said(result, "--batch-size 63 (the global batch) must be a multiple")
