"""Resume, piece by piece. For each method a run is stopped mid-epoch and mid-schedule
(Ctrl-C in the middle of an epoch, after its schedule has moved and before it has ended),
then resumed with --resume; beside it the same run goes through never stopped. At the start
of every epoch both runs' training state is taken from the training loop itself (the
locals of the method's loop when it draws the epoch's batch order), and each piece the run
carries is compared on its own: weights, optimizer moments, the learning-rate schedule's
position, the random stream, and the method's own (EMA, the plateau's best value and
counter, the incremental latent's width, the LDE's fit, the fitted samplers). Losing any
one piece fails the test named after it."""
import contextlib
import copy
import sys

import pytest
import torch

import common
import dae
import deciphering
import eae
import iae_lde
import rae
import vae
from conftest import train

# Each method: its module, tiny settings whose schedule moves before and after the stop,
# and where to stop it: (the loop's progress label, that loop's epoch from 1, step).
SETTINGS = {
    # Daly et al.'s schedule over 4 epochs: warm-up, x0.1 from epoch 2, x0.01 from epoch 3.
    "dae": (dae, dict(dataset="fake", filters=4, latent_dim=3, batch_size=32, epochs=4,
                      lr=1e-3, warmup_lr=5e-4, noise_std=0.1, gmm_components=2),
            ("epoch", 2, 3)),
    "vae": (vae, dict(dataset="fake", filters=4, latent_dim=3, batch_size=32, epochs=4,
                      lr=1e-3, warmup_lr=5e-4, gmm_components=2),
            ("epoch", 2, 3)),
    # At lr 1e-6 no epoch beats Keras' threshold: the plateau of patience 2 waits one epoch,
    # two, then halves the rate (from epoch 4) and counts again; stopped while it waits.
    "rae": (rae, dict(dataset="fake", variant="rae-l2", filters=4, latent_dim=3, batch_size=32,
                      epochs=5, patience=2, lr=1e-6, gmm_components=2),
            ("epoch", 3, 2)),
    "eae": (eae, dict(dataset="fake", filters=4, latent_dim=3, batch_size=32, epochs=4,
                      lr_decay=0.5, gmm_components=2),
            ("epoch", 2, 3)),
    # The code grows over 3 epochs, the rate halves from epochs 2 and 4; stopped in epoch 2.
    "iae_lde": (iae_lde, dict(dataset="fake", filters=4, latent_dim=6, warmup_epochs=3,
                              epochs=4, lr_drops=[1, 3], batch_size=32, output="tanh",
                              perc_weight=0.0, holdout=0, lde_components=2, lde_epochs=3,
                              lde_lr_drops=[1], lde_batch_size=64, gmm_components=2),
                ("epoch", 2, 3)),
    # ... and the same two-stage run stopped in the LDE's second epoch.
    "lde": (iae_lde, dict(dataset="fake", filters=4, latent_dim=6, warmup_epochs=3,
                          epochs=2, lr_drops=[2], batch_size=32, output="tanh",
                          perc_weight=0.0, holdout=0, lde_components=2, lde_epochs=3,
                          lde_lr_drops=[1, 2], lde_batch_size=64, gmm_components=2),
            ("LDE epoch", 2, 1)),
    # Weight decay rises from 0 to its value at epoch 2, the rates drop at epoch 3; 8 steps
    # an epoch, and the EMA's copying phase shortened to nothing (EMA_AFTER 0), so that it
    # is a copy at steps 0 and 10 and averages at step 20.
    "deciphering": (deciphering, dict(dataset="fake", image_size=16, widths=[8, 16, 32, 64],
                                      active=[1, 2, 4], clusters=2, latent_dim=8, batch_size=32,
                                      epochs=3, lr_drops=[2], wd_warmup=0.5, max_shift=4,
                                      save_every=1, lpips_size=32),
                    ("epoch", 2, 5)),
}


def state_of(local: dict) -> dict:
    """The pieces of training state in a loop's locals, copied."""
    cloned = lambda state: {k: v.clone() for k, v in state.items()}  # noqa: E731
    model = local.get("model", local.get("lde"))
    optimizer = local["optimizer"]
    pieces = {"weights": cloned(model.state_dict()),
              "optimizer moments": copy.deepcopy(optimizer.state_dict()["state"]),
              "schedule": [(g["lr"], g.get("weight_decay")) for g in optimizer.param_groups],
              "random stream": torch.get_rng_state().clone()}
    if "ema" in local:
        pieces["ema"] = cloned(local["ema"].state_dict())
    if "plateau" in local:
        pieces["plateau"] = dict(local["plateau"].state_dict())
    if "best" in local:  # the LDE: its best held-out epoch so far
        pieces["best"] = (local["best"]["nll"], local["best"]["epoch"])
    return pieces


def observed_run(module, monkeypatch, stop=None) -> dict:
    """{(loop, epoch): state} at the start of every epoch of every training loop a call of
    the method runs, and the active code widths the IAE used, in order; with stop =
    (label, epoch, step), Ctrl-C comes at that step of that loop's epoch."""
    seen = {"epochs": {}, "active": []}
    generator, progress = common.epoch_generator, common.progress

    def spy(seed, epoch, rank=0):
        frame = sys._getframe(1)
        while frame.f_globals.get("__name__") != module.__name__:
            frame = frame.f_back
        seen["epochs"][(frame.f_code.co_name, epoch)] = state_of(frame.f_locals)
        return generator(seed, epoch, rank)

    def stopping(iterable, desc="", **kwargs):
        label, epoch, step = stop
        if not desc.startswith(f"{label} {epoch}/"):
            return progress(iterable, desc=desc, **kwargs)

        def until_stopped():
            for i, item in enumerate(iterable):
                if i == step:
                    raise KeyboardInterrupt
                yield item
        return progress(until_stopped(), desc=desc, **kwargs)

    monkeypatch.setattr(common, "epoch_generator", spy)
    if stop:
        monkeypatch.setattr(common, "progress", stopping)
    if module is iae_lde:
        active = iae_lde.active_dims

        def recorded_active(*args):
            seen["active"].append(active(*args))
            return seen["active"][-1]
        monkeypatch.setattr(iae_lde, "active_dims", recorded_active)
    return seen


def run(module, tmp_path, settings, weights_home):
    """The method's whole command (both stages for iae_lde) in this process."""
    args = module.Args(**{"device": "cpu", "out_dir": str(tmp_path / "runs"),
                          "data_root": str(tmp_path / "data"), **settings})
    if module is iae_lde:
        module.main(args, set(settings) | {"device", "out_dir", "data_root"})
    else:
        module.train(args, set(settings))
    (folder,) = (tmp_path / "runs").iterdir()
    return folder


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, torch_home):
    """Per method: the states of a run never stopped, and of the same run stopped and
    resumed, by (loop, epoch), with both final checkpoints."""
    results = {}
    @contextlib.contextmanager
    def patched():
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("TORCH_HOME", str(torch_home))
            patch.setattr(deciphering, "EMA_AFTER", 0)
            yield patch

    for name, (module, settings, stop) in SETTINGS.items():
        tmp = tmp_path_factory.mktemp(name)
        with patched() as patch:
            straight = observed_run(module, patch)
            folder = run(module, tmp / "straight", settings, torch_home)
        with patched() as patch:
            observed_run(module, patch, stop)
            with pytest.raises(KeyboardInterrupt):
                run(module, tmp / "stopped", settings, torch_home)
        (stopped,) = (tmp / "stopped" / "runs").iterdir()
        with patched() as patch:
            again = observed_run(module, patch)
            resume = module.Args(resume=str(stopped))
            (module.main if module is iae_lde else module.train)(resume, {"resume"})
        results[name] = (straight, again, common.load_checkpoint(folder),
                         common.load_checkpoint(stopped))
    return results


def assert_equal(a, b, what):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), what
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            assert_equal(a[key], b[key], f"{what}: {key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{what}: {i}")
    else:
        assert a == b, what


PIECES = {
    "dae": ["weights", "optimizer moments", "schedule", "random stream", "samplers"],
    "vae": ["weights", "optimizer moments", "schedule", "random stream", "samplers"],
    "rae": ["weights", "optimizer moments", "schedule", "plateau", "samplers"],
    "eae": ["weights", "optimizer moments", "schedule", "samplers"],
    "iae_lde": ["weights", "optimizer moments", "schedule", "active code width", "samplers"],
    "lde": ["weights", "optimizer moments", "schedule", "best", "lde fit", "samplers"],
    "deciphering": ["weights", "optimizer moments", "schedule", "random stream", "ema",
                    "patterns"],
}


@pytest.mark.parametrize("method,piece", [(m, p) for m, pieces in PIECES.items()
                                          for p in pieces])
def test_resume_restores_each_piece_of_state(method, piece, resumed):
    straight, again, final_straight, final_resumed = resumed[method]
    _, _, (label, stopped_epoch, _) = SETTINGS[method]
    loop = "train_lde" if label == "LDE epoch" else "train"
    resumed_epochs = sorted(e for (fn, e) in again["epochs"] if fn == loop)
    # The run resumes at the start of the epoch it was stopped in, and goes on to the end.
    assert resumed_epochs[0] == stopped_epoch - 1
    assert resumed_epochs == sorted(e for (fn, e) in straight["epochs"]
                                    if fn == loop and e >= stopped_epoch - 1)
    if piece == "samplers":  # fitted at the end, from the same codes
        assert_equal(final_straight["samplers"], final_resumed["samplers"], piece)
    elif piece == "patterns":  # the deciphering AE's fixed patterns and clusters
        for key in ("patterns", "labels"):
            assert_equal(final_straight[key], final_resumed[key], key)
    elif piece == "lde fit":  # the stored fit and the kept LDE
        assert_equal(final_straight["lde_fit"], final_resumed["lde_fit"], piece)
    elif piece == "active code width":  # a_t of every step from the stopped epoch on
        steps = len(again["active"])
        assert steps > 0 and again["active"] == straight["active"][-steps:]
    else:  # at the start of every epoch from the stopped one on
        for epoch in resumed_epochs:
            assert_equal(straight["epochs"][(loop, epoch)][piece],
                         again["epochs"][(loop, epoch)][piece], f"{piece}, epoch {epoch + 1}")
    if piece == "weights":  # and at the end
        assert_equal(final_straight["model"], final_resumed["model"], "final weights")


def test_the_stops_fall_mid_schedule(resumed):
    """Each stop falls where the schedule has moved already and moves again after it, and
    the pieces compared are not trivially equal (they change from epoch to epoch)."""
    for method, (straight, _, _, _) in resumed.items():
        _, _, (label, stopped, _) = SETTINGS[method]
        loop = "train_lde" if label == "LDE epoch" else "train"
        epochs = sorted(e for (fn, e) in straight["epochs"] if fn == loop)
        schedule = [straight["epochs"][(loop, e)]["schedule"] for e in epochs]
        before, after = schedule[:stopped], schedule[stopped - 1:]
        assert len(set(map(str, before))) > 1 or method == "rae", method  # (rae: its wait)
        assert len(set(map(str, after))) > 1, method
        for piece in ("weights", "optimizer moments"):
            first, last = (straight["epochs"][(loop, e)][piece] for e in (epochs[1], epochs[-1]))
            with pytest.raises(AssertionError):
                assert_equal(first, last, piece)
    plateau = [s["plateau"] for (_, e), s in sorted(resumed["rae"][0]["epochs"].items())]
    assert any(p["wait"] > 0 for p in plateau) and len({p["best"] for p in plateau}) > 1
    ema, weights = (resumed["deciphering"][0]["epochs"][("train", 1)][k] for k in ("ema", "weights"))
    with pytest.raises(AssertionError):  # the EMA at the stop is not the weights
        assert_equal(ema, weights, "ema")
