"""Every option changes what it names. For each method file, every field of its Args is
either probed here or listed in NOT_PROBED (a path, the device, output), and a new field
with neither fails `test_every_option_is_probed`. A probe runs the method's own training
(train(), or main() where the option acts there) in this process on a tiny CPU run, once
with the base value and once with another, stopped as soon as what the option acts on has
been seen (the first optimizer step, the first step of epoch 2, the LDE's first step), and
checks that quantity in both runs: its value where the paper or the option's help gives
one (a learning rate, a batch's size, a code width), or that it changed where no value is
given (a seed, noise). An option whose value is ignored, or that reaches the wrong place,
fails the probe named after it.

What the probes watch, through spies that let every call go through: the model and
optimizer handed to common.open_run and the weights training starts from; every step's
learning rates and weight decays (the optimizer's step); every batch the method trains on;
every step's loss terms (the method's loss function); what common.parallel is asked for
(torch.compile is replaced by a recorder, so that nothing compiles); the epochs
checkpointed. Two things are shared to keep the probes fast: the deciphering AE's LPIPS
network is built once (load_lpips), and a run's provenance (git and package versions in
args.json) is not looked up."""
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from PIL import Image

import common
import dae
import deciphering
import eae
import iae_lde
import rae
import vae

MODULES = {m.__name__: m for m in (dae, vae, rae, eae, iae_lde, deciphering)}
# Fields that only name a path, the device or where output goes, with where they are tested.
NOT_PROBED = {
    "data_root": "a path (test_data.py reads every layout from it)",
    "out_dir": "where run folders go (every run of the tests is written under tmp_path)",
    "resume": "a run folder (test_resume.py, piece by piece)",
    "device": "the device (the tests run on the CPU; test_cuda.py on a GPU)",
    "fit_lde": "a run folder for stage two alone (test_iae_lde.py)",
    "finetune_from": "phase one's run folder (test_deciphering.py)",
}
# The tiny run each probe starts from: 256 synthetic RGB images, 4 steps an epoch.
BASE = {
    "dae": dict(dataset="fake", filters=4, latent_dim=3, batch_size=64, epochs=1,
                gmm_components=2),
    "vae": dict(dataset="fake", filters=4, latent_dim=3, batch_size=64, epochs=1,
                gmm_components=2),
    "rae": dict(dataset="fake", filters=4, latent_dim=3, batch_size=64, epochs=1,
                gmm_components=2),
    "eae": dict(dataset="fake", filters=4, latent_dim=3, batch_size=64, epochs=1,
                gmm_components=2),
    "iae_lde": dict(dataset="fake", filters=4, latent_dim=5, batch_size=64, epochs=1,
                    warmup_epochs=4.0, holdout=0, lde_components=2, lde_epochs=1,
                    lde_batch_size=64, gmm_components=2),
    "deciphering": dict(dataset="fake", widths=[8, 16, 32, 64], active=[1, 2, 4], clusters=1,
                        latent_dim=8, batch_size=64, epochs=1, lpips_size=32),
}
STEPS = 4  # per epoch of the base runs (256 images, batches of 64)
# Functions of a method whose calls every probe of it records, beside its loss.
SPIES = {**{name: [(common, "fit_samplers")] for name in ("dae", "vae", "rae", "eae")},
         "iae_lde": [(iae_lde.IAE, "forward"), "mixture_nll", (common, "fit_samplers")],
         "deciphering": ["training_batch", "cluster_images", "update_ema"]}
# The loss function each training loop calls, whose terms the probes read.
LOSSES = {"dae": ["reconstruction_loss"], "vae": ["vae_loss"], "rae": ["loss_terms", "rae_loss"],
          "eae": ["eae_loss"], "iae_lde": ["autoencoder_loss"], "deciphering": ["lpips_loss"]}


class Enough(Exception):
    """Raised by a probe once it has seen what it watches."""


@dataclasses.dataclass
class Seen:
    """What one probed run did."""
    model: nn.Module = None
    optimizer: torch.optim.Optimizer = None
    initial: dict = None  # the weights training starts from
    rates: list = dataclasses.field(default_factory=list)  # per step: (lr, decay) per group
    batches: list = dataclasses.field(default_factory=list)  # per step: the training input
    losses: list = dataclasses.field(default_factory=list)  # per call: (function, args, value)
    parallel: list = dataclasses.field(default_factory=list)  # (compile, sync_bn) asked for
    compiled: list = dataclasses.field(default_factory=list)
    saved: list = dataclasses.field(default_factory=list)  # epochs checkpointed
    calls: dict = dataclasses.field(default_factory=dict)  # other spies: name -> arguments
    runs: list = dataclasses.field(default_factory=list)  # the run folders opened
    folder: Path = None

    def loss(self, step: int = 0, name: str = "") -> dict:
        """The loss terms of a step (as floats), from the function `name` (default: last)."""
        values = [v for n, _, v in self.losses if not name or n == name]
        value = values[step]
        if isinstance(value, dict):
            return {k: v.item() for k, v in value.items()}
        return {"loss": value.item()}

    def first(self, group: int = 0):
        return self.rates[0][group]

    def at_epoch_two(self, group: int = 0):
        return self.rates[STEPS][group]


class Recording(nn.Module):
    """The shared LPIPS network, recording the side of the images it is given."""

    def __init__(self, net, seen):
        super().__init__()
        self.net, self.seen = net, seen

    def forward(self, a, b):
        self.seen.calls.setdefault("lpips", []).append(a.shape[-1])
        self.seen.calls.setdefault("lpips_dtype", []).append((a.dtype, b.dtype))
        return self.net(a, b)


def detached(value):
    if isinstance(value, dict):
        return {k: v.detach().clone() for k, v in value.items()}
    return value.detach().clone()


@pytest.fixture(scope="module")
def lpips_net(torch_home):
    """The deciphering AE's LPIPS network, built once, when a probe first needs it."""
    built, load = [], deciphering.load_lpips  # (the probes replace load_lpips)

    def get():
        if not built:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("TORCH_HOME", str(torch_home))
                built.append(load(torch.device("cpu")))
        return built[0]
    return get


def probe(name, tmp_path, monkeypatch, lpips_net, steps=1, call="train", spy=(), **settings):
    """Run the method `name` with BASE[name] and `settings` until `steps` optimizer steps
    (None: to the end), recording what it does (Seen); `spy`: other functions of the module
    whose arguments to record."""
    module, seen = MODULES[name], Seen()
    settings = {**BASE[name], **settings}
    with monkeypatch.context() as patch:
        open_run, parallel, batches, save_epoch = (common.open_run, common.parallel,
                                                   common.batches, common.save_epoch)

        def opened(method, args, checkpoint, model, optimizer):
            folder, start = open_run(method, args, checkpoint, model, optimizer)
            seen.model, seen.optimizer, seen.folder = model, optimizer, folder
            seen.runs.append((folder, args))
            seen.initial = {k: v.clone() for k, v in model.state_dict().items()}
            step = optimizer.step

            def counted(*a, **k):
                seen.rates.append([(g["lr"], g["weight_decay"]) for g in optimizer.param_groups])
                result = step(*a, **k)
                if steps is not None and len(seen.rates) >= steps:
                    raise Enough
                return result
            optimizer.step = counted
            return folder, start

        def parallel_spy(model, compile=False, sync_bn=False):
            seen.parallel.append((compile, sync_bn))
            return parallel(model, compile, sync_bn)

        def batches_spy(*args, **kwargs):
            for x in batches(*args, **kwargs):
                seen.batches.append(x.clone())
                yield x

        def save_spy(folder, method, args, epoch, *rest, **extra):
            seen.saved.append(epoch)
            return save_epoch(folder, method, args, epoch, *rest, **extra)

        patch.setattr(common, "open_run", opened)
        patch.setattr(common, "parallel", parallel_spy)
        patch.setattr(common, "batches", batches_spy)
        patch.setattr(common, "save_epoch", save_spy)
        patch.setattr(common, "provenance", lambda device=None: {})
        patch.setattr(torch, "compile", lambda model, **k: seen.compiled.append(model) or model)
        patch.setattr(deciphering, "load_lpips", lambda device: Recording(lpips_net(), seen))
        for function in LOSSES[name]:
            def loss_spy(*args, _real=getattr(module, function), _name=function, **kwargs):
                result = _real(*args, **kwargs)
                seen.losses.append((_name, args, detached(result)))
                return result
            patch.setattr(module, function, loss_spy)
        for function in (*SPIES.get(name, ()), *spy):
            owner, function = function if isinstance(function, tuple) else (module, function)

            def call_spy(*args, _real=getattr(owner, function), _name=function, **kwargs):
                result = _real(*args, **kwargs)
                seen.calls.setdefault(_name, []).append((args, kwargs, result))
                return result
            patch.setattr(owner, function, call_spy)
        args = module.Args(**{"device": "cpu", "out_dir": str(tmp_path / "runs"),
                              "data_root": str(tmp_path / "data"), **settings})
        try:
            getattr(module, call)(args, set(settings) | {"device", "out_dir", "data_root"})
        except Enough:
            pass
    return seen


def folder_of_images(root: Path, side: int = 40) -> Path:
    """A flat image folder (train / test split every tenth file) of `side`-pixel images
    whose centres and borders differ, so that a centre crop shows."""
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(90):
        image = (torch.rand(3, side, side, generator=g) * 255).to(torch.uint8)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / f"{i:03d}.png")
    return root


def codes_of(seen: Seen) -> torch.Tensor:
    with torch.no_grad():
        return seen.model.eval().encoder(seen.batches[0])


def convs(module: nn.Module) -> list:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def spectrally_normed(module: nn.Module) -> bool:
    return any(nn.utils.parametrize.is_parametrized(m) for m in module.modules())


def differ(a, b) -> bool:
    if isinstance(a, dict):
        return any(differ(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) != len(b) or any(differ(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.shape != b.shape or not torch.equal(a, b)
    return a != b


# ---------------------------------------------------------------------------------------
# The probes: field -> (other value, settings of both runs, check(base, other)). `settings`
# may hold `steps` (optimizer steps to watch; None: the whole run) and `call` (main).
# ---------------------------------------------------------------------------------------
TWO_EPOCHS = dict(epochs=2, steps=STEPS + 1)  # up to epoch 2's first step


def is_mirror(a: torch.Tensor, b: torch.Tensor) -> bool:
    """b holds a's images, some of them mirrored left-right (not none, not all)."""
    same = (a == b).flatten(1).all(1)
    mirrored = (a.flip(3) == b).flatten(1).all(1)
    return bool((same | mirrored).all() and mirrored.any() and not mirrored.all())


def backbone_probes(first_rate, rate_field="lr") -> dict:
    """What DAE, VAE, RAE and EAE share: data, backbone, batches, seed, samplers, speed."""
    folder = {"dataset": "folder", "data_root": "FOLDER"}
    return {
        "dataset": ("digits", {}, lambda b, o: (b.batches[0].shape[1], o.batches[0].shape[1])
                    == (3, 1)),
        "image_size": (16, {}, lambda b, o: (b.batches[0].shape[-1], o.batches[0].shape[-1])
                       == (32, 16)),
        "crop": (20, folder, lambda b, o: b.batches[0].shape == o.batches[0].shape
                 and differ(b.batches[0], o.batches[0])),
        "filters": (6, {}, lambda b, o: (convs(b.model.encoder)[0].out_channels,
                                         convs(o.model.encoder)[0].out_channels) == (4, 6)),
        "depth": ([2], {}, lambda b, o: (len(convs(b.model.encoder)), len(convs(o.model.encoder)))
                  == (4, 8)),
        "latent_dim": (5, {}, lambda b, o: (codes_of(b).shape[1], codes_of(o).shape[1]) == (3, 5)),
        "epochs": (2, {"steps": None}, lambda b, o: (b.saved, o.saved) == ([0], [0, 1])),
        "batch_size": (32, {}, lambda b, o: (len(b.batches[0]), len(o.batches[0])) == (64, 32)),
        rate_field: (2 * first_rate[0], first_rate[1], lambda b, o: math.isclose(
            first_rate[2](o), 2 * first_rate[2](b), rel_tol=1e-12)),
        "gmm_components": (3, {"steps": None}, lambda b, o: [
            len(common.load_checkpoint(s.folder)["samplers"]["gmm"]["weights"]) for s in (b, o)]
            == [2, 3]),
        # the initial weights, the batch order and the ex-post GMM's
        "seed": (1, {"steps": None}, lambda b, o: differ(b.initial, o.initial)
                 and differ(b.batches[0], o.batches[0]) and [
                     s.calls["fit_samplers"][0][0][1] for s in (b, o)] == [0, 1]),
        "compile": (True, {}, lambda b, o: [c for c, _ in b.parallel + o.parallel] == [False, True]
                    and o.compiled == [o.model] and not b.compiled),
        "sync_bn": (True, {}, lambda b, o: [s for _, s in b.parallel + o.parallel]
                    == [False, True]),
    }


def flip_probe():
    return (True, {}, lambda b, o: not is_mirror(b.batches[0], b.batches[0].flip(3))
            and is_mirror(b.batches[0], o.batches[0]))


def daly_schedule_probes() -> dict:
    """Daly et al.'s schedule: the warm-up epoch at warmup_lr, then lr x0.1 from int(0.33 S)
    and again from int(0.66 S), S = --schedule-epochs or --epochs."""
    return {
        "schedule_epochs": (9, TWO_EPOCHS, lambda b, o: (b.at_epoch_two()[0], o.at_epoch_two()[0])
                            == pytest.approx((1e-5, 1e-3))),  # S 2: both drops by epoch 2
        "warmup_lr": (3e-4, {}, lambda b, o: (b.first()[0], o.first()[0]) == (1e-4, 3e-4)),
    }


PROBES = {
    "dae": {
        **backbone_probes((1e-3, TWO_EPOCHS, lambda s: s.at_epoch_two()[0])),
        **daly_schedule_probes(),
        "flip": flip_probe(),
        "latent_norm": ("bn", {}, lambda b, o: [any(isinstance(m, nn.BatchNorm1d)
                                                    for m in s.model.encoder.modules())
                                                for s in (b, o)] == [False, True]),
        "noise_std": (0.5, {}, lambda b, o: b.loss()["loss"] != o.loss()["loss"]),
        "freeze_latent": (True, {}, lambda b, o: [torch.equal(
            s.initial["encoder.1.0.weight"], s.model.state_dict()["encoder.1.0.weight"])
            for s in (b, o)] == [False, True]),
        "batch_norm": (False, {}, lambda b, o: [sum(isinstance(m, nn.BatchNorm2d)
                                                    for m in s.model.modules()) > 0
                                                for s in (b, o)] == [True, False]),
    },
    "vae": {
        **backbone_probes((1e-3, TWO_EPOCHS, lambda s: s.at_epoch_two()[0])),
        **daly_schedule_probes(),
        # -log p(x|z): BCE per pixel, below 1 here, or squared error summed over positions
        "loss": ("gaussian", {}, lambda b, o: b.loss()["reconstruction"] < 1
                 < o.loss()["reconstruction"]),
        # the negative ELBO: reconstruction + beta KL, beta 0.01 for bce (Daly et al.)
        "kl_weight": (0.5, {}, lambda b, o: all(math.isclose(
            s.loss()["loss"], s.loss()["reconstruction"] + beta * s.loss()["kl"], rel_tol=1e-5)
            for s, beta in ((b, 0.01), (o, 0.5)))),
        # CV-VAE: a fixed encoder std, so one head of d means instead of two
        "fixed_std": (0.7, {}, lambda b, o: (b.model.encoder.heads.out_features,
                                             o.model.encoder.heads.out_features) == (6, 3)),
    },
    "rae": {
        **backbone_probes((5e-4, {}, lambda s: s.first()[0])),
        # Eq. (11): L_REC + beta L_z + lambda L_REG, as each variant defines L_REG
        "variant": ("ae", {}, lambda b, o: b.loss(name="loss_terms")["decoder_penalty"] > 0
                    and o.loss(name="loss_terms")["decoder_penalty"] == 0
                    and o.loss(name="rae_loss")["loss"] == o.loss(
                        name="loss_terms")["reconstruction"]),
        "beta": (2.0, {}, lambda b, o: rae_weights(o)[0] == pytest.approx(2.0)
                 and rae_weights(b)[0] == pytest.approx(2 * 3072 * 1e-3 / 3)),
        "reg_weight": (0.5, {}, lambda b, o: rae_weights(o)[1] == pytest.approx(0.5)
                       and rae_weights(b)[1] == pytest.approx(3072 * 1e-6)),
        "sn_layers": ("all", {"variant": "rae-sn"}, lambda b, o: spectrally_normed(
            b.model.decoder) and not spectrally_normed(b.model.encoder)
            and spectrally_normed(o.model.encoder)),
        # Keras' plateau: at lr 1e-6 no epoch is better by min_delta, so patience 1 halves
        # the rate after epoch 2 (epoch 1 sets the best); patience 5 not yet
        "patience": (1, {"epochs": 3, "steps": 2 * STEPS + 1, "lr": 1e-6},
                     lambda b, o: (b.rates[-1][0][0], o.rates[-1][0][0]) == (1e-6, 5e-7)),
    },
    "eae": {
        **backbone_probes((5e-4, {}, lambda s: s.first()[0])),
        "flip": flip_probe(),
        # Eq. (2) + L2: reconstruction - lambda H + lambda_L2 L2 (fake data: L2 off unless set)
        "entropy_weight": (0.5, {}, lambda b, o: all(math.isclose(
            s.loss()["loss"], s.loss()["reconstruction"] - w * s.loss()["entropy"], rel_tol=1e-5)
            for s, w in ((b, 0.05), (o, 0.5)))),
        "k": (2, {}, lambda b, o: b.loss()["entropy"] != o.loss()["entropy"]),
        "l2_weight": (0.5, {}, lambda b, o: b.loss()["decoder_penalty"] == 0 and math.isclose(
            o.loss()["loss"], o.loss()["reconstruction"] - 0.05 * o.loss()["entropy"]
            + 0.5 * o.loss()["decoder_penalty"], rel_tol=1e-5) and o.loss()["decoder_penalty"] > 0),
        "spectral_norm": ("decoder", {}, lambda b, o: not spectrally_normed(b.model)
                          and spectrally_normed(o.model.decoder)
                          and not spectrally_normed(o.model.encoder)),
        "lr_decay": (0.5, TWO_EPOCHS, lambda b, o: (b.at_epoch_two()[0], o.at_epoch_two()[0])
                     == pytest.approx((5e-4 * 0.97, 5e-4 * 0.5))),
    },
}


def lde_log(seen: Seen) -> list:
    return [r for r in map(json.loads, (seen.runs[0][0] / "log.jsonl").read_text().splitlines())
            if r.get("stage") == "lde"]


def active(seen: Seen, step: int) -> int:
    """The code width the IAE's decoder saw at a step (forward's `active`)."""
    return seen.calls["forward"][step][0][2]


def batch_of(seen: Seen, step: int = 0):
    """The deciphering AE's step: (uint8 images, patterns, args, epoch) and (noise, masks,
    position, target)."""
    args, _, result = seen.calls["training_batch"][step]
    return args, result


def starts_from(seen: Seen, state: dict) -> bool:
    return not differ(seen.initial, state)


IAE_STAGE_TWO = {"call": "main", "steps": None}
PROBES["iae_lde"] = {
    **{k: v for k, v in backbone_probes((1e-3, {}, lambda s: s.first()[0])).items()
       if k != "depth"},
    "flip": flip_probe(),
    "filters": (6, {}, lambda b, o: (convs(b.model.encoder)[0].out_channels,
                                     convs(o.model.encoder)[0].out_channels) == (4, 6)),
    "latent_dim": (7, {}, lambda b, o: (codes_of(b).shape[1], codes_of(o).shape[1]) == (5, 7)),
    # Sec. 3.4: a_t = min(d, int(d e_t / W + 1)) dims; at epoch 2's start e_t = 1
    "warmup_epochs": (2.0, TWO_EPOCHS, lambda b, o: (active(b, STEPS), active(o, STEPS))
                      == (int(5 / 4 + 1), int(5 / 2 + 1))),
    # Eq. (5): MSE + beta L_Perc, L_Perc > 0 for images that differ
    "perc_weight": (0.1, {}, lambda b, o: o.loss()["loss"] > b.loss()["loss"]),
    "output": ("sigmoid", {}, lambda b, o: (b.model.low, o.model.low) == (-1.0, 0.0)
               and isinstance(o.model.decoder[-1], nn.Sigmoid)),
    "holdout": (64, {"steps": None}, lambda b, o: (len(b.batches), len(o.batches)) == (4, 3)),
    "lr_drops": ([0], {}, lambda b, o: (b.first()[0], o.first()[0]) == (1e-3, 5e-4)),
    "lde_components": (3, IAE_STAGE_TWO, lambda b, o: [common.load_checkpoint(s.folder)[
        "samplers"]["lde"]["components"] for s in (b, o)] == [2, 3]),
    "lde_epochs": (2, IAE_STAGE_TWO, lambda b, o: (len(lde_log(b)), len(lde_log(o))) == (1, 2)),
    "lde_batch_size": (32, IAE_STAGE_TWO, lambda b, o: [
        len(s.calls["mixture_nll"][0][0][3]) for s in (b, o)] == [64, 32]),
    "lde_lr": (4e-4, IAE_STAGE_TWO, lambda b, o: [lde_log(s)[0]["lr"] for s in (b, o)]
               == [2e-4, 4e-4]),
    "lde_lr_drops": ([0], IAE_STAGE_TWO, lambda b, o: [lde_log(s)[0]["lr"] for s in (b, o)]
                     == [2e-4, 1e-4]),
    "lde_holdout": (0.0, IAE_STAGE_TWO, lambda b, o: ["validation_loss" in lde_log(s)[0]
                                                       for s in (b, o)] == [True, False]),
}


def kmeans_seeds(monkeypatch) -> list:
    """The random_state of every KMeans that cluster_images builds."""
    import sklearn.cluster

    seeds, real = [], sklearn.cluster.KMeans

    def recorded(*args, random_state=None, **kwargs):
        seeds.append(random_state)
        return real(*args, random_state=random_state, **kwargs)
    monkeypatch.setattr(sklearn.cluster, "KMeans", recorded)
    return seeds


NO_SHIFT = {"max_shift": 0}
PROBES["deciphering"] = {
    "dataset": ("digits", {}, lambda b, o: [batch_of(s)[1][3].shape[1] for s in (b, o)] == [3, 1]),
    "image_size": (16, {}, lambda b, o: [batch_of(s)[1][3].shape[-1] for s in (b, o)] == [32, 16]),
    "crop": (20, {"dataset": "folder", "data_root": "FOLDER"}, lambda b, o: differ(
        batch_of(b)[0][0], batch_of(o)[0][0])),
    "widths": ([16, 16, 32, 64], {}, lambda b, o: [convs(s.model.encoder_stages[0])[0].out_channels
                                                   for s in (b, o)] == [8, 16]),
    "active": ([2, 2, 4], {}, lambda b, o: [batch_of(s)[1][1][0].sum(1).unique().tolist()
                                            for s in (b, o)] == [[1.0], [2.0]]),
    "latent_dim": (6, {}, lambda b, o: (b.model.to_latent.out_features,
                                        o.model.to_latent.out_features) == (8, 6)),
    "clusters": (2, {}, lambda b, o: [len(s.calls["cluster_images"][0][2].unique())
                                      for s in (b, o)] == [1, 2]),
    "pattern_seed": (124, {}, lambda b, o: differ(batch_of(b)[1][1], batch_of(o)[1][1])),
    "kmeans_seed": (1, {"clusters": 2}, None),  # KMeans' random_state: in the test below
    # r = 0 when R = 0: the MLP reads 50 + 50 r / R = 50
    "max_shift": (0, {}, lambda b, o: not (batch_of(b)[1][2] == 50).all()
                  and (batch_of(o)[1][2] == 50).all()),
    # odd epochs train on the image flipped
    "flip": (False, {**TWO_EPOCHS, **NO_SHIFT}, lambda b, o: all(torch.equal(
        batch_of(s, STEPS)[1][3], (batch_of(s, STEPS)[0][0].float() / 127.5 - 1).flip(3)) == f
        for s, f in ((b, True), (o, False)))),
    "epochs": (2, {"steps": None}, lambda b, o: (b.saved, o.saved) == ([0], [1])),
    # weight decay rises to its value over int(wd_warmup S) epochs, S = --schedule-epochs
    "schedule_epochs": (10, TWO_EPOCHS, lambda b, o: [s.at_epoch_two()[1] for s in (b, o)]
                        == pytest.approx([0.08, 0.08 / 4])),
    "batch_size": (32, {}, lambda b, o: [len(batch_of(s)[0][0]) for s in (b, o)] == [64, 32]),
    "lr": (4e-3, {}, lambda b, o: (b.rates[0], o.rates[0]) == pytest.approx(
        ([(2e-3, 0.08), (2e-4, 0.08)], [(4e-3, 0.08), (4e-4, 0.08)]))),
    "mlp_lr": (1e-3, {}, lambda b, o: (b.first(1)[0], o.first(1)[0]) == pytest.approx(
        (2e-4, 1e-3))),
    "lr_drops": ([1], TWO_EPOCHS, lambda b, o: (b.at_epoch_two()[0], o.at_epoch_two()[0])
                 == pytest.approx((2e-3, 2e-4))),
    "weight_decay": (0.04, {}, lambda b, o: (b.first()[1], o.first()[1]) == (0.08, 0.04)),
    "wd_warmup": (2.0, {}, lambda b, o: (b.first()[1], o.first()[1]) == (0.08, 0.0)),
    "ema_decay": (0.5, {"steps": 2}, lambda b, o: [s.calls["update_ema"][0][0][3] for s in (b, o)]
                  == [0.99995, 0.5]),
    "lpips_size": (64, {}, lambda b, o: (b.calls["lpips"][0], o.calls["lpips"][0]) == (32, 64)),
    "finetune_ema": (True, {"finetune_from": "PHASE_ONE"}, lambda b, o: starts_from(
        b, common.load_checkpoint(b.runs[0][1].finetune_from)["model"]) and starts_from(
        o, common.load_checkpoint(o.runs[0][1].finetune_from)["ema"])),
    "phase_two_epochs": (1, {"call": "main", "steps": STEPS + 1}, lambda b, o: len(b.runs) == 1
                         and len(o.runs) == 2 and o.runs[1][1].finetune_from == str(
                             o.runs[0][0].resolve()) and o.runs[1][1].epochs == 1),
    "save_every": (1, {"epochs": 2, "steps": None}, lambda b, o: (b.saved, o.saved)
                   == ([1], [0, 1])),
    "seed": (1, {}, lambda b, o: differ(b.initial, o.initial)
             and differ(batch_of(b)[1][0], batch_of(o)[1][0])),
    "compile": (True, {}, lambda b, o: [c for c, _ in b.parallel + o.parallel] == [False, True]
                and o.compiled == [o.model] and not b.compiled),
    "sync_bn": (True, {}, lambda b, o: [s for _, s in b.parallel + o.parallel] == [False, True]),
}


def rae_weights(seen: Seen) -> tuple:
    """(beta, lambda) that the first step's Eq. (11) was computed with."""
    return next(args[1:3] for n, args, _ in seen.losses if n == "rae_loss")


def test_every_option_is_probed():
    for name, module in MODULES.items():
        fields = {f.name for f in dataclasses.fields(module.Args)}
        assert fields == set(PROBES[name]) | (fields & set(NOT_PROBED)), name


CASES = [(name, field) for name in PROBES for field in PROBES[name]]


@pytest.fixture(scope="module")
def phase_one(tmp_path_factory, lpips_net):
    """A finished phase one of the deciphering AE, whose EMA differs from its weights."""
    with pytest.MonkeyPatch.context() as patch:
        seen = probe("deciphering", tmp_path_factory.mktemp("phase_one"), patch, lpips_net,
                     steps=None, epochs=3)
    return seen.folder


@pytest.fixture(scope="module")
def base_runs(tmp_path_factory):
    """The base run of each method and settings, probed once for all its fields."""
    return tmp_path_factory.mktemp("base"), {}


@pytest.mark.parametrize("name,field", CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_each_option_changes_what_it_names(name, field, tmp_path, monkeypatch, lpips_net,
                                           torch_home, request, base_runs):
    other, settings, check = PROBES[name][field]
    settings = dict(settings)
    monkeypatch.setenv("TORCH_HOME", str(torch_home))  # VGG19 for the perceptual loss
    if settings.get("data_root") == "FOLDER":
        settings["data_root"] = str(folder_of_images(tmp_path / "folder"))
    if settings.get("finetune_from") == "PHASE_ONE":
        settings["finetune_from"] = str(request.getfixturevalue("phase_one"))
    if check is None:  # the k-means seed: what KMeans is built with
        seeds = kmeans_seeds(monkeypatch)
        probe(name, tmp_path / "base", monkeypatch, lpips_net, **settings)
        probe(name, tmp_path / "other", monkeypatch, lpips_net, **{**settings, field: other})
        assert seeds == [0, 1]
        return
    folder, bases = base_runs
    key = (name, repr(sorted(settings.items())))
    if key not in bases:
        bases[key] = probe(name, folder / str(len(bases)), monkeypatch, lpips_net, **settings)
    changed = probe(name, tmp_path / "other", monkeypatch, lpips_net, **{**settings, field: other})
    base = bases[key]
    assert check(base, changed)
