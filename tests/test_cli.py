"""Each script as a user starts it, as a subprocess: one tiny end-to-end run of each, and
eval.py once on each kind of run (a backbone method's samplers, the LDE, the deciphering
samplers); --help of each through the same entry point in this process. Everything else
is tested in-process through the method files' own functions."""
import importlib
import json
import math
import sys
from unittest import mock

import pytest

import common
from conftest import run_script, run_with_weights

@pytest.mark.parametrize("name", ["dae", "vae", "rae", "eae", "iae_lde", "deciphering", "eval"])
def test_help(name, capsys):
    """--help through the scripts' own entry point (common.cli), in this process: every
    flag with its default; the scripts start as subprocesses below."""
    module = importlib.import_module(name)
    with mock.patch.object(sys, "argv", [f"{name}.py", "--help"]):
        with pytest.raises(SystemExit) as stop:
            common.cli(module.main, module.Args, module.__doc__)
    out = capsys.readouterr().out
    assert stop.value.code == 0 and f"usage: {name}.py" in out
    assert "--device" in out and "(default:" in out
    assert module.__doc__.strip().split("\n\n")[0].split()[0] in out  # the title line


BACKBONE = ["--dataset", "digits", "--filters", "4", "--latent-dim", "4", "--epochs", "1",
            "--batch-size", "64", "--gmm-components", "2", "--device", "cpu"]


@pytest.mark.parametrize("script, flags", [
    ("vae.py", []), ("rae.py", ["--variant", "rae-gp"]), ("eae.py", []),
])
def test_tiny_run(script, flags, tmp_path):
    result = run_script(script, *BACKBONE, *flags, "--out-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    (run,) = tmp_path.iterdir()
    assert set(common.load_checkpoint(run)["samplers"]) == {"normal", "mvg", "gmm"}
    assert "done:" in result.stdout


def evaluate(torch_home, run, *flags):
    result = run_with_weights(torch_home, "eval.py", run, "--num-samples", "2", "--batch-size",
                              "2", "--device", "cpu", *flags)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert all(math.isfinite(c["fid"]) for c in metrics["columns"].values())
    return metrics, result.stdout


def test_dae_run_then_eval(tmp_path, torch_home):
    result = run_script("dae.py", *BACKBONE, "--out-dir", tmp_path,
                        "--data-root", tmp_path / "data")
    assert result.returncode == 0, result.stderr
    (run,) = tmp_path.glob("dae-*")
    metrics, out = evaluate(torch_home, run, "--samplers", "gmm")
    assert list(metrics["columns"]) == ["rec", "gmm", "interp"] and "| FID |" in out


def test_iae_lde_run_then_eval_of_the_lde(tmp_path, torch_home):
    result = run_with_weights(torch_home, "iae_lde.py", *BACKBONE[:-2], "--warmup-epochs", "1",
                              "--components", "3", "--lde-epochs", "1", "--perc-weight", "0",
                              "--out-dir", tmp_path, "--data-root", tmp_path / "data")
    assert result.returncode == 0, result.stderr
    (run,) = tmp_path.glob("iae_lde-*")
    metrics, out = evaluate(torch_home, run, "--samplers", "lde")
    assert list(metrics["columns"]) == ["rec", "lde", "interp"] and "| LDE |" in out


def test_deciphering_run_then_eval(tmp_path, torch_home):
    result = run_with_weights(torch_home, "deciphering.py", "--dataset", "fake", "--widths", "8",
                              "16", "32", "64", "--active", "1", "2", "4", "--clusters", "4",
                              "--latent-dim", "8", "--batch-size", "64", "--lpips-size", "32",
                              "--epochs", "1", "--device", "cpu", "--out-dir", tmp_path,
                              "--data-root", tmp_path / "data")
    assert result.returncode == 0, result.stderr
    (run,) = tmp_path.glob("deciphering-*")
    metrics, _ = evaluate(torch_home, run, "--samplers", "uniform")
    assert list(metrics["columns"]) == ["uniform"]


def test_a_user_mistake_is_one_line_on_stderr(tmp_path):
    result = run_script("dae.py", "--dataset", "folder", "--data-root", tmp_path / "nope")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: data folder {tmp_path / 'nope'} does not exist; pass --data-root"]
