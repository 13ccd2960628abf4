"""Each script as a user starts it, as a subprocess: the README's quick-start commands as
written (one epoch), then its eval.py line on all their runs (a backbone method's samplers,
the LDE, the deciphering samplers) in one table; --help of each through the same entry
point in this process. Everything else is tested in-process through the method files' own
functions."""
import importlib
import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import pytest

import common
from conftest import ROOT, run_script, run_with_weights, script_env


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


def quick_start() -> list[list[str]]:
    """The command lines of the README's quick start, split into words."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start")[1].split("\n## ")[0]
    return [line.split()[1:] for line in section.splitlines() if line.startswith("    python ")]


SHORT = {"--epochs": "1", "--lde-epochs": "1", "--warmup-epochs": "1", "--num-samples": "2"}


def shortened(words: list[str]) -> list[str]:
    """A quick-start command with one epoch (and 2 samples for eval.py)."""
    return [SHORT.get(words[i - 1], word) if i else word for i, word in enumerate(words)]


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory, torch_home):
    """Every training command of the README's quick start, as written but for one epoch, as
    subprocesses (two at a time, one thread each); returns {script: run folder}."""
    tmp = tmp_path_factory.mktemp("quick")
    env = {**script_env(), "TORCH_HOME": str(torch_home), "OMP_NUM_THREADS": "1"}

    def start(words):
        argv = [*shortened(words), "--device", "cpu", "--out-dir", tmp / words[0][:-3],
                "--data-root", tmp / "data"]
        return words, subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, env=env,
                                     capture_output=True, text=True, timeout=600)

    commands = sorted((words for words in quick_start() if words[0] != "eval.py"),
                      key=lambda words: words[0] != "deciphering.py")  # the longest first
    with ThreadPoolExecutor(2) as pool:
        finished = list(pool.map(start, commands))
    runs = {}
    for words, result in finished:
        assert result.returncode == 0, (words, result.stderr)
        assert "done" in result.stdout
        (runs[words[0]],) = (tmp / words[0][:-3]).glob(f"{words[0][:-3]}-digits-*")
    return runs
@pytest.mark.slow  # six trainings, one of them LPIPS at 128 px: over a minute
def test_the_quick_start_trains_every_method(quick_runs):
    assert sorted(quick_runs) == sorted(f"{m}.py" for m in
                                        ("dae", "vae", "rae", "eae", "iae_lde", "deciphering"))
    for script, run in quick_runs.items():
        samplers = set(common.method_of(run).load_run(run).samplers)
        own = {"iae_lde.py": {"lde"}, "deciphering.py": {"uniform", "clusters", "running-bn"}}
        expected = own.get(script, set()) | ({"normal", "mvg", "gmm"} if script !=
                                             "deciphering.py" else set())
        assert samplers == expected, script
        assert (run / ("samples.png" if script == "deciphering.py" else "samples_gmm.png")
                ).stat().st_size > 0


@pytest.mark.slow
def test_the_quick_start_eval_prints_one_table(quick_runs, torch_home):
    """The README's eval.py line with 2 samples (and 4 reference images), on runs its glob
    matches: one table holding a row per run and sampler, and --json writes the same."""
    (words,) = [w for w in quick_start() if w[0] == "eval.py"]
    assert words[1] == "runs/*-digits-*"
    # Three of the six runs, one of each kind of sampler: the backbone's, the LDE, the
    # deciphering AE's (every column costs Inception passes on the CPU).
    runs = sorted(quick_runs[f"{m}.py"] for m in ("dae", "iae_lde", "deciphering"))
    table_file = runs[0].parent.parent / "table.json"
    result = run_with_weights(torch_home, "eval.py", *map(str, runs),
                              *shortened(words)[2:], "--ref-size", "4", "--batch-size", "2",
                              "--device", "cpu", "--json", table_file)
    assert result.returncode == 0, result.stderr
    rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith("| ")]
    table = json.loads(table_file.read_text())
    expected = [(run.name, column) for run in runs
                for column in json.loads((run / "metrics.json").read_text())["columns"]]
    assert [(row[1].strip(), row[3].strip().lower().replace("n(0,i)", "normal"))
            for row in rows[1:]] == expected
    assert sorted(table) == sorted(map(str, runs))
    assert all(math.isfinite(c["fid"]) for m in table.values() for c in m["columns"].values())


def test_a_user_mistake_is_one_line_on_stderr(tmp_path):
    result = run_script("dae.py", "--dataset", "folder", "--data-root", tmp_path / "nope")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: data folder {tmp_path / 'nope'} does not exist; pass --data-root"]
