"""The run lifecycle: stop anywhere, move anything, resume. Each test reproduces one way a
run used to be lost, silently changed or left unreadable (an old run's renamed options, a
phase two whose phase one moved, Ctrl-C after --resume, settings typed at --resume, --fit-lde
on a run still training or on another split, a stale args.json or log, a dropped LDE, a
folder without a checkpoint, the link between the deciphering AE's phases), and checks the
run now comes through."""
import json
import os
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

import common
import dae
import deciphering as D
import eae
import eval as eval_module
import iae_lde as I
import rae
from conftest import cli_error, log_records, train

TINY = dict(dataset="fake", filters=4, latent_dim=3, batch_size=64, gmm_components=2)


def edit_checkpoint(folder: Path, edit):
    state = common.load_checkpoint(folder)
    edit(state)
    common.atomic_save(state, folder / common.CHECKPOINT)


def test_a_run_written_with_a_renamed_option_is_one_sentence(tmp_path, capsys):
    """An EAE run that stores --reg-weight (since --entropy-weight): --resume, eval.py and
    --fit-lde each stop with one sentence that names the new option; the RAE's own
    --reg-weight is no renamed option."""
    folder = train(eae, tmp_path, **TINY, epochs=1)
    edit_checkpoint(folder, lambda s: s["args"].update(reg_weight=s["args"].pop("entropy_weight")))
    expected = f"{folder} was written with --reg-weight, since renamed --entropy-weight"
    assert expected in cli_error(eae, ["--resume", folder], capsys)
    assert expected in cli_error(eval_module, [folder, "--device", "cpu"], capsys)
    assert expected in cli_error(I, ["--fit-lde", folder, "--device", "cpu"], capsys)
    other = train(rae, tmp_path / "rae", **TINY, epochs=1)
    assert "reg_weight" in common.load_checkpoint(other)["args"]  # read without complaint


def test_a_resumed_run_says_how_to_go_on_at_ctrl_c(tmp_path, capsys, monkeypatch):
    """Ctrl-C after --resume, before the resumed run's first checkpoint, and during --fit-lde
    (before and after its first LDE epoch), names the checkpoint kept and the command that
    goes on; eval.py's Ctrl-C is just that."""
    folder = train(dae, tmp_path, **TINY, epochs=1)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    def stopped(module, argv, where, name):
        capsys.readouterr()
        with monkeypatch.context() as patch:
            patch.setattr(where, name, ctrl_c)
            patch.setattr(common, "LAST_SAVED", [])
            patch.setattr(sys, "argv", [f"{module.__name__}.py", *map(str, argv)])
            with pytest.raises(SystemExit) as stop:
                common.cli(module.main, module.Args, module.__doc__,
                           trains=module is not eval_module)
        assert stop.value.code == 130
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert stopped(dae, ["--resume", folder, "--epochs", "2"], common, "batches") == (
        f"interrupted: the checkpoint of epoch 1 in {folder} is kept; "
        f"continue with --resume {folder}")
    fit = ["--fit-lde", folder, "--lde-components", "2", "--lde-epochs", "2", "--lde-batch-size",
           "64", "--device", "cpu"]
    assert stopped(I, fit, I, "mixture_nll") == (
        f"interrupted: the checkpoint of epoch 1 in {folder} is kept; "
        f"continue with --fit-lde {folder}")
    calls = []
    real = I.mixture_nll
    monkeypatch.setattr(I, "mixture_nll", lambda *a: calls.append(1) or (
        ctrl_c() if len(calls) > 6 else real(*a)))  # epoch 1: 3 steps and the held-out NLL
    assert stopped(I, fit, common, "set_rng_state") == (
        f"interrupted: the LDE fit of epoch 1 in {folder} is kept; "
        f"continue with --fit-lde {folder}")
    monkeypatch.setattr(I, "mixture_nll", real)
    assert stopped(eval_module, [folder, "--device", "cpu"], common, "Inception") == "interrupted"


def test_settings_typed_at_resume_are_the_runs_from_then_on(tmp_path):
    """--resume RUN --epochs 2: args.json and the checkpoint hold the new value at once (a
    stale args.json misled the paper lookup); the IAE's LDE settings typed at --resume, too,
    so that a later plain --resume goes on with them."""
    folder = train(dae, tmp_path, **TINY, epochs=1)
    dae.train(dae.Args(resume=str(folder), epochs=2), {"resume", "epochs"})
    assert json.loads((folder / "args.json").read_text())["epochs"] == 2
    run, _ = train(I, tmp_path / "iae", **TINY, epochs=1, warmup_epochs=1.0,
                   lde_components=2, lde_epochs=1, lde_batch_size=64)
    I.fit_lde(str(run), I.Args(**{**common.load_checkpoint(run)["args"], "device": "cpu"}), set())
    I.main(I.Args(resume=str(run), lde_epochs=2), {"resume", "lde_epochs"})
    stored = common.load_checkpoint(run)
    assert stored["args"]["lde_epochs"] == 2 and stored["lde_fit"]["epoch"] == 2
    assert json.loads((run / "args.json").read_text())["lde_epochs"] == 2


def test_fit_lde_refuses_a_run_still_training(tmp_path, monkeypatch):
    """A run whose checkpoint holds no samplers has not finished (or is training now): no
    LDE is fitted to it; and a checkpoint rewritten while the LDE trains (a run resumed
    meanwhile) stops the fit before it writes."""
    folder = train(dae, tmp_path, **TINY, epochs=2)
    edit_checkpoint(folder, lambda s: s.update(samplers={}, epoch=0))  # as after epoch 1
    with pytest.raises(common.UserError, match="has not finished training"):
        I.fit_lde(str(folder), I.Args(lde_components=2, lde_epochs=1, device="cpu"), set())
    finished = train(dae, tmp_path / "b", **TINY, epochs=1)
    before = common.load_checkpoint(finished)
    real = I.mixture_nll

    def training_meanwhile(*args):
        os.utime(finished / common.CHECKPOINT, ns=(1, 1))  # another process writes it
        return real(*args)

    monkeypatch.setattr(I, "mixture_nll", training_meanwhile)
    with pytest.raises(common.UserError, match="was rewritten while the LDE was fitted"):
        I.fit_lde(str(finished), I.Args(lde_components=2, lde_epochs=1, device="cpu"), set())
    after = common.load_checkpoint(finished)
    assert after["epoch"] == before["epoch"] and "lde_fit" not in after


def test_fit_lde_takes_the_runs_own_split(tmp_path, monkeypatch):
    """On an RAE run the LDE fits the codes of the 1,350 digits it trained on, and keeps the
    epoch best on the codes of its 150 validation digits (held out: no training code lost);
    on an IAE run with --holdout, its held-out images'."""
    folder = train(rae, tmp_path, dataset="digits", filters=4, latent_dim=3, batch_size=64,
                   epochs=1, gmm_components=2)
    seen, real = [], I.train_lde
    monkeypatch.setattr(I, "train_lde", lambda codes, args, folder, device, state, held=None:
                        seen.append((codes, held)) or real(codes, args, folder, device, state,
                                                           held))
    I.fit_lde(str(folder), I.Args(lde_components=2, lde_epochs=1, device="cpu"), set())
    (codes, held), = seen
    run = rae.load_run(str(folder))
    digits = common.load_images("digits", "", "train").float() / 255
    with torch.no_grad():
        torch.testing.assert_close(codes, run.model.encoder(digits[:1350]))
        torch.testing.assert_close(held, run.model.encoder(digits[1350:]))
    fit = common.load_checkpoint(folder)["samplers"]["lde"]["settings"]
    assert fit["held_out_codes"] == 150


def test_resuming_a_finished_run_keeps_its_samplers_lde_too(tmp_path):
    folder = train(dae, tmp_path, **TINY, epochs=1)
    I.fit_lde(str(folder), I.Args(lde_components=2, lde_epochs=1, device="cpu"), set())
    before = common.load_checkpoint(folder)["samplers"]
    dae.train(dae.Args(resume=str(folder)), {"resume"})
    after = common.load_checkpoint(folder)["samplers"]
    assert set(after) == {"normal", "mvg", "gmm", "lde"}
    assert torch.equal(after["gmm"]["means"], before["gmm"]["means"])
    dae.train(dae.Args(resume=str(folder), epochs=2), {"resume", "epochs"})  # trained on:
    assert set(common.load_checkpoint(folder)["samplers"]) == {"normal", "mvg", "gmm"}  # new


def test_the_log_holds_each_epoch_once_after_a_resume(tmp_path, monkeypatch):
    """Stopped after epoch 2's log line but before its checkpoint: resumed, epoch 2 is
    trained and logged again, once."""
    saves, real = [], common.save_epoch

    def stop_at_second(*args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(common, "save_epoch", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        train(dae, tmp_path, **TINY, epochs=3)
    monkeypatch.setattr(common, "save_epoch", real)
    (folder,) = (tmp_path / "runs").iterdir()
    assert [r["epoch"] for r in log_records(folder)] == [1, 2]
    dae.train(dae.Args(resume=str(folder)), {"resume"})
    assert [r["epoch"] for r in log_records(folder)] == [1, 2, 3]


def test_an_rae_run_of_another_split_is_not_resumed(tmp_path, capsys):
    """The validation split is code: a checkpoint that does not record this code's split
    (written before it) would train on other images if resumed."""
    folder = train(rae, tmp_path, **TINY, epochs=1)
    assert common.load_checkpoint(folder)["validation_images"] == 25  # fake: a tenth of 256
    edit_checkpoint(folder, lambda s: s.pop("validation_images"))
    assert "was trained with another validation split" in cli_error(
        rae, ["--resume", folder, "--epochs", "2"], capsys)


def test_eval_skips_a_folder_without_a_checkpoint(tmp_path, monkeypatch, capsys):
    """runs/* also matches a run that never finished an epoch (a phase two killed at once):
    one line, and the table of the others."""
    from test_eval import StubInception

    monkeypatch.setattr(common, "Inception", StubInception)
    folder = train(dae, tmp_path, **TINY, epochs=1)
    empty = tmp_path / "runs" / "deciphering-finetune-fake-empty"
    empty.mkdir()
    results = eval_module.main(eval_module.Args(
        runs=[str(empty), str(folder)], num_samples=3, ref_size=3, samplers=["gmm"],
        device="cpu", data_root=str(tmp_path)), set())
    out = capsys.readouterr().out
    assert list(results) == [str(folder)]
    assert f"skipping {empty}: no checkpoint.pt" in out and f"| {folder.name} | dae |" in out


def test_the_paper_figure_is_todays_not_the_stored_one(tmp_path, monkeypatch):
    """metrics.json read back: the paper's figure printed is the code's current one."""
    from test_eval import StubInception

    monkeypatch.setattr(common, "Inception", StubInception)
    folder = train(dae, tmp_path, **TINY, epochs=1)
    args = eval_module.Args(num_samples=3, ref_size=3, samplers=["gmm"], device="cpu",
                            data_root=str(tmp_path))
    assert eval_module.evaluate(str(folder), args)["paper_fid"] == {}
    monkeypatch.setattr(eval_module, "paper_figures", lambda *a: {"gmm": 73.78})  # corrected
    monkeypatch.setattr(eval_module, "score", lambda *a, **k: pytest.fail("computed again"))
    assert eval_module.evaluate(str(folder), args)["paper_fid"] == {"gmm": 73.78}


def test_depth_one_one_one_one_is_depth_one_for_the_paper():
    key = dict(dataset="cifar10", filters=128, latent_dim=128)
    paper = dae.paper_fid({**dae.dataclasses.asdict(dae.Args()), **key, "depth": [1]})
    assert paper["gmm"] == 73.78
    assert dae.paper_fid({**dae.dataclasses.asdict(dae.Args()), **key,
                          "depth": [1, 1, 1, 1]}) == paper


# -- The deciphering AE's two phases -----------------------------------------------------
DTINY = dict(dataset="fake", widths=[8, 16, 32, 64], active=[1, 2, 4], clusters=1,
             latent_dim=8, batch_size=128, lpips_size=32, save_every=1, device="cpu")


def both_phases(tmp_path, **settings):
    settings = {**DTINY, "epochs": 1, "phase_two_epochs": 1, "out_dir": str(tmp_path),
                "data_root": str(tmp_path / "data"), **settings}
    D.main(D.Args(**settings), set(settings))
    (one,) = tmp_path.glob("deciphering-fake-*")
    return one


def link_of(phase_one: Path) -> dict:
    return json.loads((phase_one / D.PHASE_TWO_FILE).read_text())


def test_a_resumed_phase_two_does_not_need_phase_one_where_it_was(weights, tmp_path):
    """Phase two resumed after phase one's folder moved: it trains on and saves, writing
    nothing into phase one's old folder."""
    one = both_phases(tmp_path / "runs")
    two = Path(link_of(one)["phase_two"])
    one.rename(tmp_path / "moved")
    D.main(D.Args(resume=str(two), epochs=2), {"resume", "epochs"})
    assert common.load_checkpoint(two)["epoch"] == 1 and not one.exists()


def test_phase_two_killed_before_its_first_checkpoint_starts_again(weights, tmp_path,
                                                                    monkeypatch, capsys):
    """Phase one's link names phase two as soon as its folder exists; killed before phase
    two's first checkpoint (kill -9: no clean-up), --resume of phase one starts phase two
    again and the link names the new one."""
    saves, real = [], common.save_epoch

    def killed_in_phase_two(folder, method, *args, **kwargs):
        if method == "deciphering" and args[0].finetune_from:
            raise KeyboardInterrupt
        return real(folder, method, *args, **kwargs)

    monkeypatch.setattr(common, "save_epoch", killed_in_phase_two)
    with pytest.raises(KeyboardInterrupt):
        both_phases(tmp_path / "runs")
    monkeypatch.setattr(common, "save_epoch", real)
    (one,) = (tmp_path / "runs").glob("deciphering-fake-*")
    first = Path(link_of(one)["phase_two"])
    assert first.is_dir() and not (first / common.CHECKPOINT).exists()
    D.main(D.Args(resume=str(one)), {"resume"})
    assert "has no checkpoint" in capsys.readouterr().out
    second = Path(link_of(one)["phase_two"])
    assert second != first and common.load_checkpoint(second)["epoch"] == 0
    assert link_of(one)["from_epoch"] == 0


def test_phase_one_trained_on_gets_a_phase_two_of_its_own(weights, tmp_path, capsys):
    """--resume of phase one with more --epochs after phase two began: phase one trains on,
    then a new phase two fine-tunes the new phase one (the old one is left as it is); a
    plain --resume afterwards continues that new phase two."""
    one = both_phases(tmp_path / "runs")
    old = Path(link_of(one)["phase_two"])
    D.main(D.Args(resume=str(one), epochs=2), {"resume", "epochs"})
    assert "fine-tunes phase one's epoch 1, not its last" in capsys.readouterr().out
    new = link_of(one)
    assert Path(new["phase_two"]) != old and new["from_epoch"] == 1
    assert common.load_checkpoint(old)["epoch"] == 0  # untouched
    D.main(D.Args(resume=str(one)), {"resume"})
    assert "starting phase two again" not in capsys.readouterr().out
    assert link_of(one) == new


def test_flags_typed_at_resume_of_phase_one_reach_phase_two(weights, tmp_path, monkeypatch):
    """--device and --compile typed at --resume of phase one are phase two's too."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **k: compiled.append(model) or model)
    one = both_phases(tmp_path / "runs", phase_two_epochs=2)
    D.main(D.Args(resume=str(one), compile=True, device="cpu"), {"resume", "compile", "device"})
    two = Path(link_of(one)["phase_two"])
    assert common.load_checkpoint(two)["args"]["compile"] is True and compiled


def test_phase_two_fine_tunes_a_finished_phase_one_only(weights, tmp_path):
    one = both_phases(tmp_path / "runs", phase_two_epochs=0, epochs=2)
    edit_checkpoint(one, lambda s: s.update(epoch=0))  # as if stopped after epoch 1 of 2
    with pytest.raises(common.UserError, match="stopped at epoch 1 of its 2"):
        D.train(D.Args(finetune_from=str(one), epochs=1, device="cpu"),
                {"finetune_from", "epochs", "device"})
