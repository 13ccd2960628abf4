"""Deterministic autoencoder with ex-post sampling (Daly, Fieldsend and Tabor 2022).

Paper: "Variational Autoencoders Without the Variation", G. A. Daly, J. E. Fieldsend and
G. Tabor, 2022, https://arxiv.org/abs/2203.00645
From common.py: Encoder, Decoder (the Ghosh et al. backbone, inputs mapped to [-1, 1]),
daly_learning_rate, fit_samplers (the ex-post N(0, I), MVG and GMM); the data, its batches
and encode / sample / decode; the run machinery of its part two.

The method. A plain convolutional autoencoder (the Tolstikhin et al. / Ghosh et al.
backbone) is trained with the reconstruction loss alone: no KL term, no regulariser. After
training, the training set is encoded and a density is fitted to the codes "ex post": an
isotropic N(0, I), one full-covariance Gaussian (MVG), or a 10-component Gaussian mixture
(GMM). New images are decoded samples of that density. The paper's finding is that large
enough DAEs sampled this way beat beta-VAEs of the same size (Table 2: CIFAR-10, f=128,
GMM FID 73.78 against 94.21), their implicit regularisation coming from the size of the
networks and gradient descent; N(0, I) sampling fails without a latent batch norm.

Key equations (the paper numbers none of them):
    z = E(x),   x_hat = sigmoid(D(z))                              encoder / decoder
    L(x) = -(1/P) sum_p [x_p log x_hat_p + (1 - x_p) log(1 - x_hat_p)]   BCE, P pixels
    after training: fit p(z) in {N(0, I), N(mu, Sigma), sum_k pi_k N(mu_k, Sigma_k)}
    on {E(x_i)} of the training set; sample z ~ p(z) and decode.

Reproduce (the paper trains 100 epochs, batch 128; FID with `python eval.py RUN_DIR`):
    Table 2, CIFAR-10, f=128, 128 latents (MVG 82.49, GMM 73.78):
        python dae.py --dataset cifar10 --filters 128 --latent-dim 128
    Table 2, the same with a latent batch norm (N(0, I) 94.14, GMM 73.05):
        python dae.py --dataset cifar10 --filters 128 --latent-dim 128 --latent-norm bn
    Table 2 / Fig. 1, other widths: --filters 32, 64 or 256
    Table 3, CIFAR-10, f=128, best latent size (MVG 81.62, GMM 72.82):
        python dae.py --dataset cifar10 --filters 128 --latent-dim 144
    Table 3, other widths at their best latent sizes: --filters 32 --latent-dim 160 | 192;
        --filters 64 --latent-dim 152; --filters 256 --latent-dim 160
    Best CIFAR-10 result, depths [3, 3, 2, 1], 96 latents (MVG 77.10, GMM 67.32):
        python dae.py --dataset cifar10 --filters 128 --depth 3 3 2 1 --latent-dim 96
    Tables 2 and 3, CelebA 64x64 (centre crop 140, resize 64), f=128, 128 latents
    (MVG 46.96, GMM 39.10; Table 2's caption says 64 latents, Table 3 lists these under 128):
        python dae.py --dataset celeba --data-root DATA --filters 128 --latent-dim 128
    Table 3, CelebA, f=128, 96 latents (MVG 44.98, GMM 39.13): --latent-dim 96
    Fig. 4 latent normalisations: --latent-norm bn | sn | ln
    Decoder-input noise (Sec. 4): --noise-std 0.1 | 0.5 | 1.0
    Fig. 3 frozen latent layer: --freeze-latent (with --depth 1 or 2)
    Offline quick start (scikit-learn's digits, about two minutes on two CPU cores):
        python dae.py --dataset digits --filters 16 --latent-dim 16 --epochs 40 --batch-size 64

Deviations and choices:
  - The paper used TensorFlow 2.4; this is PyTorch. Keras' defaults are kept where they
    matter: Glorot-uniform init with zero biases, batch-norm momentum 0.99 (PyTorch 0.01)
    and eps 1e-3, layer-norm eps 1e-3, Adam eps 1e-7, and TensorFlow's 'same' padding for
    every conv and transposed conv (common.SameConv, SameConvTranspose: the odd pixel of
    padding after).
  - The paper does not say how "depth n" applies to the decoder. Here each decoder stage
    of width 4f, 2f (f) takes the depth of the encoder stage of the same width, its
    stride-1 convs before the stride-2 transposed conv (mirroring the encoder).
  - For 64x64 images (CelebA) the decoder has a third stride-2 stage, of width f (4f, 2f,
    f, then the output layer), as Ghosh et al.'s CelebA decoder (512, 256, 128 for f = 128);
    the paper describes the 32x32 decoder's two (4f, 2f) only.
  - The decoder's first layer maps to 8x8x8f (the Ghosh et al. code hard-codes 8x8x1024,
    the same for f=128); its output layer is a stride-1 transposed conv to C channels, no
    BN, as that code's.
  - Inputs are mapped to [-1, 1] inside the encoder for every data set. The Ghosh et al.
    code (whose backbone the paper uses) does so for MNIST and CIFAR-10 and feeds CelebA
    in [0, 1]; the paper does not say. The decoder's output is a sigmoid; the BCE is the
    mean over pixels, as Keras computes it.
  - Learning-rate switches at epochs int(0.33 E) and int(0.66 E) (33 and 66 for E = 100);
    the warm-up epoch (constant 1e-4) is the first of the E epochs. A run resumed with a
    larger --epochs keeps the schedule of the epochs it was started with.
  - GMM: scikit-learn GaussianMixture with max_iter 2000, tol 1e-3 (the RAE code's values;
    the paper gives none), seeded with --seed. MVG sampling uses an eigendecomposition, so
    a singular covariance (e.g. --latent-norm ln) does not fail.
  - "SN on the latent layer" is spectral normalisation of the linear layer that outputs
    the code; "frozen" keeps that layer's weights and bias at their initial values.
  - No augmentation by default (the paper mentions none); --flip adds random flips.
  - The digits data set (1500 train / 297 test images upscaled to 32x32) is our offline
    addition, not in the paper.
  - --no-batch-norm (not the paper's) removes the backbone's batch norms, the only part
    of the DAE that depends on how torchrun splits a batch (README, "Several GPUs").
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from common import arg


@dataclass
class Args:
    dataset: str = arg("cifar10", "data set", choices=common.DATASETS)
    data_root: str = arg("data", "folder of the data set (torchvision downloads into it)")
    image_size: int = arg(0, "image side; 0: the data set's own (64 for celeba, else 32)", low=0)
    crop: int = arg(0, "centre crop before resizing; 0: 140 for celeba, none otherwise", low=0)
    flip: bool = arg(False, "random horizontal flips (the paper uses no augmentation)")
    filters: int = arg(128, "filter base f: encoder stages have f, 2f, 4f, 8f filters", low=1)
    depth: list[int] = arg([1], "convs per stage (strided last): one value or four", low=1)
    latent_dim: int = arg(128, "latent units (128 in Table 2; Table 3 sweeps them)", low=1)
    latent_norm: str = arg("none", "on the latent layer: batch, layer or spectral norm",
                           choices=("none", "bn", "ln", "sn"))
    noise_std: float = arg(0.0, "std of Gaussian noise added to the decoder input", low=0)
    freeze_latent: bool = arg(False, "keep the latent layer at its random initialisation")
    batch_norm: bool = arg(True, "batch norm in the conv stages (the paper's); off, no step "
                           "depends on how a batch is split between torchrun processes")
    epochs: int = arg(100, "training epochs", low=1)
    schedule_epochs: int = arg(0, "epochs the lr schedule spans; 0: --epochs (a run resumed "
                               "with more --epochs keeps its own schedule)", low=0)
    batch_size: int = arg(128, "batch size", low=1)
    lr: float = arg(1e-3, "learning rate; x0.1 at 33%% and again at 66%% of the epochs", low=0)
    warmup_lr: float = arg(1e-4, "learning rate of the first (warm-up) epoch", low=0)
    gmm_components: int = arg(10, "components of the ex-post GMM", low=1)
    seed: int = arg(0, "seed of initialisation, batch order and samplers")
    device: str = arg("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    compile: bool = arg(False, "torch.compile the model (worth it on CUDA only)")
    sync_bn: bool = arg(False, "torchrun: batch-norm statistics over all processes (SyncBatchNorm)")
    out_dir: str = arg("runs", "parent folder of the run folders")
    resume: str = arg("", "run folder to continue from its last checkpoint")


# -- Model: the common backbone; the latent layer and its variants (Sec. 4) are the DAE's own ---
def latent_layer(args: Args, in_features: int) -> nn.Sequential:
    """The code layer: a Linear to the latent units, spectrally normalised (sn) or followed
    by a batch norm (bn) or layer norm (ln), optionally frozen at its random initialisation."""
    linear = nn.Linear(in_features, args.latent_dim)
    norm = {"bn": nn.BatchNorm1d(args.latent_dim),
            "ln": nn.LayerNorm(args.latent_dim, eps=1e-3)}  # Keras' epsilon
    layer = nn.Sequential(linear, norm.get(args.latent_norm, nn.Identity()))
    common.keras_init(layer)
    if args.latent_norm == "sn":
        common.spectral_norm(linear)
    if args.freeze_latent:  # Fig. 3: weights and bias stay at their initial values
        linear.requires_grad_(False)
    return layer


def without_batch_norm(module: nn.Module):
    """--no-batch-norm (not the paper's): the backbone's batch norms become identities."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        else:
            without_batch_norm(child)


class DAE(nn.Module):
    def __init__(self, args: Args, channels: int, image_size: int):
        super().__init__()
        features = common.Encoder(channels, image_size, args.filters, args.depth)
        self.encoder = nn.Sequential(features, latent_layer(args, features.out_features))
        self.decoder = common.Decoder(channels, image_size, args.filters, args.depth,
                                      args.latent_dim)
        self.noise_std = args.noise_std
        if not args.batch_norm:
            without_batch_norm(self)

    def forward(self, x):  # x [B, C, H, W] in [0, 1]
        z = self.encoder(x)  # [B, d]
        if self.training and self.noise_std:  # Sec. 4: noise on the decoder's input
            return self.decoder(z + self.noise_std * torch.randn_like(z)), z
        return self.decoder(z), z  # logits [B, C, H, W], codes [B, d]


# -- Loss (the schedule, shared with vae.py, is common.daly_learning_rate) ---------------
def reconstruction_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy, mean over pixels and batch: the DAE's only loss term."""
    return F.binary_cross_entropy_with_logits(logits.float(), x)


# -- Training ----------------------------------------------------------------------------
def train(args: Args, given: set):
    args, checkpoint, device, train_images, test_images = common.start(args, given, "dae")
    data_shape = tuple(train_images.shape[1:3])  # channels, image size (square images)
    model = DAE(args, *data_shape).to(device)
    model = model.to(memory_format=common.memory_format(device))  # channels_last on CUDA
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, eps=1e-7)
    folder, start_epoch = common.open_run("dae", args, checkpoint, model, optimizer)
    wrapped = common.parallel(model, args.compile, args.sync_bn)  # DDP (torchrun), compiled

    state = checkpoint  # (a run resumed with no epoch left to train: its own)
    for epoch in range(start_epoch, args.epochs):
        lr = common.set_lr(optimizer, common.daly_learning_rate(
            epoch, args.schedule_epochs or args.epochs, args.lr, args.warmup_lr))
        model.train()
        steps = common.Epoch(folder, args.seed, epoch, args.batch_size, total=args.epochs)
        for x in steps.batches(train_images, args.flip):  # [B, C, H, W] in [0, 1]
            with common.autocast(device):
                logits, _ = wrapped(x)
            loss = reconstruction_loss(logits, x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps.add(loss=loss)
        steps.end(lr=lr)  # the epoch's mean BCE, in log.jsonl
        common.save_test_reconstructions(model, test_images, folder)
        state = common.save_epoch(folder, "dae", args, epoch, model, optimizer, data_shape)

    # Ex post, the method's generative half: encode the training set (eval-mode batch norm),
    # fit N(0, I), MVG and a GMM to the codes, decode samples of each (grids).
    codes = common.gather_rows(common.encode_all(model.eval().encoder, train_images))  # [N, d]
    samplers = common.fit_samplers(codes, args.seed, args.gmm_components)
    common.keep_samplers(state, samplers, model, test_images, folder, args.seed)  # checkpoint
    print(f"done: grids, log.jsonl and checkpoint in {folder}")
    return folder


# -- Sampling, and the functions eval.py calls -------------------------------------------
def load_run(run_dir: str, device: str = "cpu") -> common.Run:
    """A trained run: the model in eval mode on `device` and its fitted samplers."""
    return common.load_run(run_dir, device, lambda args, shape: DAE(Args(**args), *shape))


# Images from codes and codes from images: decode(sample(N(0, I) | MVG | GMM)) is how the
# method generates; the backbone methods share these (common.py).
encode, decode, sample = common.encode, common.decode, common.sample


def main(args: Args, given: set):
    train(args, given)


# -- The paper's figures, which eval.py prints beside ours -----------------------------
# The paper's FIDs (Tables 2, 3; test-set reference, 10,000 samples), which eval.py prints
# beside ours: {(data set, filters, depth, latent units, latent norm): {column: FID}}.
# Table 2's CelebA row is keyed at 128 latents: Table 3 lists the same figures under 128
# (Table 2's caption says 64); its CelebA rows of 32 and 64 filters, whose latent size is
# therefore unclear, are left out. Every DAE row of Table 3 is here.
PAPER_FID = {
    ("cifar10", 32, (1,), 128, "none"): {"rec": 60.20, "normal": 288.8, "mvg": 99.60,
                                         "gmm": 90.55},
    ("cifar10", 64, (1,), 128, "none"): {"rec": 48.05, "normal": 372.3, "mvg": 85.38,
                                         "gmm": 77.36},
    ("cifar10", 128, (1,), 128, "none"): {"rec": 45.21, "normal": 282.3, "mvg": 82.49,
                                          "gmm": 73.78},
    ("cifar10", 128, (1,), 128, "bn"): {"rec": 45.24, "normal": 94.14, "mvg": 82.64,
                                        "gmm": 73.05},
    ("cifar10", 256, (1,), 128, "none"): {"rec": 47.51, "normal": 402.7, "mvg": 90.59,
                                          "gmm": 79.97},
    ("cifar10", 32, (1,), 160, "none"): {"rec": 51.06, "normal": 376.1, "mvg": 98.90,
                                         "gmm": 88.17},
    ("cifar10", 32, (1,), 192, "none"): {"rec": 43.55, "normal": 419.6, "mvg": 98.49,
                                         "gmm": 88.51},
    ("cifar10", 64, (1,), 152, "none"): {"rec": 43.22, "normal": 370.8, "mvg": 86.55,
                                         "gmm": 76.59},
    ("cifar10", 128, (1,), 144, "none"): {"rec": 40.31, "normal": 428.6, "mvg": 81.62,
                                          "gmm": 72.82},
    ("cifar10", 256, (1,), 160, "none"): {"rec": 37.70, "normal": 379.5, "mvg": 86.90,
                                          "gmm": 75.67},
    ("cifar10", 128, (3, 3, 2, 1), 96, "none"): {"mvg": 77.10, "gmm": 67.32},
    ("celeba", 32, (1,), 384, "none"): {"rec": 32.50, "normal": 474.4, "mvg": 62.77,
                                        "gmm": 51.58},
    ("celeba", 64, (1,), 80, "none"): {"rec": 45.83, "normal": 409.5, "mvg": 53.76,
                                       "gmm": 49.31},
    ("celeba", 64, (1,), 384, "none"): {"rec": 29.62, "normal": 502.9, "mvg": 55.67,
                                        "gmm": 45.80},
    ("celeba", 128, (1,), 96, "none"): {"rec": 34.84, "normal": 406.47, "mvg": 44.98,
                                        "gmm": 39.13},
    ("celeba", 128, (1,), 128, "none"): {"rec": 31.85, "normal": 426.9, "mvg": 46.96,
                                         "gmm": 39.10},
}
# Each figure above: 10,000 samples against the 10,000 test images (Sec. 4); eval.py
# prints it beside ours only for as many samples, against the whole test split.
PAPER_SAMPLES = 10_000
# The settings that select a row of PAPER_FID, in its keys' order (paper_settings: the rest).
PAPER_KEY = ("dataset", "filters", "depth", "latent_dim", "latent_norm")


def paper_settings(key: tuple) -> dict:
    """Every setting of the paper's run that PAPER_FID[key] reports: the key's, and Args'
    defaults (the paper's) for the rest."""
    return {**dataclasses.asdict(Args()), **dict(zip(PAPER_KEY, key)), "depth": list(key[2])}


def paper_fid(args: dict, ref: str = "test") -> dict:
    """The paper's FIDs (all against the test split) for this run, by column: only when the
    run is a reported setting (common.paper_row)."""
    return common.paper_row(args, ref, PAPER_FID, PAPER_KEY, paper_settings)


if __name__ == "__main__":
    common.cli(main, Args, __doc__)
