"""VAE baselines: the beta-VAE of Daly et al. (2022) and the VAE / constant-variance VAE of
Ghosh et al. (2020), on the common backbone.

Papers: "Variational Autoencoders Without the Variation", G. A. Daly, J. E. Fieldsend and
G. Tabor, 2022, https://arxiv.org/abs/2203.00645 (its VAE baseline, Table 2), and "From
Variational to Deterministic Autoencoders", P. Ghosh et al., ICLR 2020,
https://openreview.net/forum?id=S1g7tpEYDS (its VAE and CV-VAE rows of Table 1).

The method. The encoder outputs the mean mu(x) and standard deviation sigma(x) of a
diagonal Gaussian q(z|x); a code is drawn with the reparameterisation z = mu + sigma * eps,
eps ~ N(0, I), and decoded; the loss is a reconstruction term plus beta times the KL
divergence of q(z|x) from the prior N(0, I), in closed form. New images are decoded
samples of the prior; as for the deterministic autoencoders, a full-covariance Gaussian
(MVG) and a 10-component GMM fitted ex post on the encoder means are offered too. The
constant-variance VAE (CV-VAE) fixes sigma for every input, so that its KL reduces to
||mu||^2 / 2 plus a constant: noise injected into the decoder's input, the view the RAE
paper starts from.

    L(x) = E_q(z|x)[-log p(x|z)] + beta KL(q(z|x) || N(0, I))            Daly et al. Sec. 2
    KL = 1/2 sum_j (sigma_j^2 + mu_j^2 - 1 - log sigma_j^2)              closed form
    CV-VAE: sigma_j = s fixed, KL = 1/2 ||mu||^2 + d/2 (s^2 - 1 - log s^2)

Reproduce (FID with `python eval.py RUN_DIR`):
    Daly et al. Table 2, CIFAR-10, f=128, 128 latents (REC 76.20, N(0,I) 99.62, MVG 101.9,
    GMM 94.21):
        python vae.py --dataset cifar10
    Ghosh et al. Table 1, VAE (CIFAR-10: REC 57.94, N 106.37, GMM 103.78):
        python vae.py --dataset cifar10 --loss gaussian --lr 1e-4 --warmup-lr 1e-4 --batch-size 100
    Ghosh et al. Table 1, CV-VAE (CIFAR-10: REC 37.74, GMM 86.64):
        python vae.py --dataset cifar10 --loss gaussian --fixed-std 0.7 --lr 1e-4 \\
            --warmup-lr 1e-4 --batch-size 100
    Other data sets: --dataset mnist --latent-dim 16; --dataset celeba --data-root DATA
    --latent-dim 64 (Ghosh et al.'s CelebA VAE used batches of 1000).

Deviations and choices:
  - Backbone, optimiser and schedule as dae.py (Daly et al.: Adam, one warm-up epoch at
    1e-4, then 1e-3, x0.1 at 33% and 66% of 100 epochs, batch 128). The Ghosh et al.
    VAEs trained with Adam 1e-4 and halving on a validation plateau; their command lines
    above keep this file's step schedule at 1e-4.
  - The two heads (mu and log sigma) are one linear layer with 2d outputs, split;
    log sigma = 5 tanh(.), bounded as the official RAE code does.
  - --loss bce (Daly et al.): binary cross-entropy averaged over pixels (as dae.py, Keras)
    plus beta = 0.01 times the KL summed over latent units. The paper does not give the
    normalisation; this one keeps the KL strong enough to match its Table 2 (N(0, I)
    sampling close to GMM, reconstructions much worse than the DAE's).
  - --loss gaussian (Ghosh et al.): squared error summed over positions and averaged over
    channels plus the official per-data-set KL weight: VAE 0.312 / 0.024 / 0.09024 and
    CV-VAE (sigma 0.7) 0.039 / 9e-4 / 0.01 for MNIST / CIFAR-10 / CelebA (other data
    sets: CIFAR-10's). This is a Gaussian decoder with a fixed variance.
  - The ex-post MVG and GMM are fitted on the encoder means mu (official RAE code).
  - Under torchrun (README, "Several GPUs"): --batch-size is the global batch; the backbone's
    batch norms normalise over a process's B/N images unless --sync-bn (CUDA). The KL and
    reconstruction terms are per image, and each process draws its own noise.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from common import arg

# Ghosh et al.'s KL weights for --loss gaussian: (learned sigma, fixed sigma) per data set.
GAUSSIAN_KL_WEIGHT = {"mnist": (0.312, 0.039), "cifar10": (0.024, 9e-4),
                      "celeba": (0.09024, 0.01)}
# The papers' FIDs (test-set reference) by (data set, loss, fixed sigma) and column.
PAPER_FID = {
    ("cifar10", "bce", False): {"rec": 76.20, "normal": 99.62, "mvg": 101.9, "gmm": 94.21},
    ("cifar10", "gaussian", False): {"rec": 57.94, "normal": 106.37, "gmm": 103.78,
                                     "interp": 88.62},
    ("cifar10", "gaussian", True): {"rec": 37.74, "mvg": 94.75, "gmm": 86.64, "interp": 69.71},
    ("mnist", "gaussian", False): {"rec": 18.26, "normal": 19.21, "gmm": 17.66, "interp": 18.21},
    ("mnist", "gaussian", True): {"rec": 15.15, "mvg": 33.79, "gmm": 17.87, "interp": 25.12},
    ("celeba", "gaussian", False): {"rec": 39.12, "normal": 48.12, "gmm": 45.52,
                                    "interp": 44.49},
    ("celeba", "gaussian", True): {"rec": 40.41, "mvg": 48.87, "gmm": 49.30, "interp": 44.96},
}


@dataclass
class Args:
    dataset: str = arg("cifar10", "data set", choices=common.DATASETS)
    data_root: str = arg("data", "folder of the data set (torchvision downloads into it)")
    image_size: int = arg(0, "image side; 0: the data set's own (64 for celeba, else 32)", low=0)
    crop: int = arg(0, "centre crop before resizing; 0: 140 for celeba, none otherwise", low=0)
    loss: str = arg("bce", "bce + beta KL (Daly et al.) or gaussian decoder (Ghosh et al.)",
                    choices=("bce", "gaussian"))
    kl_weight: float = arg(-1.0, "beta; -1: 0.01 for bce, the official weight for gaussian")
    fixed_std: float = arg(0.0, "CV-VAE: this encoder std for every input (0.7); 0: learned",
                           low=0)
    filters: int = arg(128, "filter base f: encoder stages have f, 2f, 4f, 8f filters", low=1)
    depth: list[int] = arg([1], "convs per stage (strided last): one value or four", low=1)
    latent_dim: int = arg(128, "latent units (128 CIFAR-10, 16 MNIST, 64 CelebA)", low=1)
    epochs: int = arg(100, "training epochs", low=1)
    batch_size: int = arg(128, "batch size", low=1)
    lr: float = arg(1e-3, "learning rate; x0.1 at 33%% and again at 66%% of the epochs", low=0)
    warmup_lr: float = arg(1e-4, "learning rate of the first (warm-up) epoch", low=0)
    gmm_components: int = arg(10, "components of the ex-post GMM", low=1)
    seed: int = arg(0, "seed of initialisation, batch order, noise and samplers")
    device: str = arg("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    compile: bool = arg(False, "torch.compile the model (worth it on CUDA only)")
    sync_bn: bool = arg(False, "under torchrun: batch-norm statistics over every process's "
                        "batch (SyncBatchNorm, CUDA)")
    out_dir: str = arg("runs", "parent folder of the run folders")
    resume: str = arg("", "run folder to continue from its last checkpoint")


def kl_weight(args: Args) -> float:
    if args.kl_weight >= 0:
        return args.kl_weight
    if args.loss == "bce":
        return 0.01
    return GAUSSIAN_KL_WEIGHT.get(args.dataset, GAUSSIAN_KL_WEIGHT["cifar10"])[args.fixed_std > 0]


# ----------------------------------------------------------------------------------------
# Model: Gaussian encoder on the common backbone, decoder as dae.py
# ----------------------------------------------------------------------------------------


class GaussianEncoder(nn.Module):
    """x -> mu (forward: what eval.py and the ex-post samplers use) or (mu, log sigma)."""

    def __init__(self, args: Args, channels: int, image_size: int):
        super().__init__()
        self.d, self.fixed_std = args.latent_dim, args.fixed_std
        heads = 1 if args.fixed_std > 0 else 2  # CV-VAE: no sigma head
        self.body = common.Encoder(channels, image_size, args.filters, args.depth,
                                   heads * args.latent_dim)

    def moments(self, x):
        h = self.body(x)  # [B, heads * d]
        mu = h[:, :self.d]
        if self.fixed_std > 0:
            return mu, torch.full_like(mu, math.log(self.fixed_std))
        return mu, 5 * torch.tanh(h[:, self.d:])  # log sigma, bounded (official)

    def forward(self, x):
        return self.moments(x)[0]  # [B, d]


class VAE(nn.Module):
    def __init__(self, args: Args, channels: int, image_size: int):
        super().__init__()
        self.encoder = GaussianEncoder(args, channels, image_size)
        self.decoder = common.Decoder(channels, image_size, args.filters, args.depth,
                                      args.latent_dim)

    def forward(self, x):  # x [B, C, H, W] in [0, 1]
        mu, log_sigma = self.encoder.moments(x)  # [B, d] each
        z = mu + log_sigma.exp() * torch.randn_like(mu)  # reparameterisation
        return self.decoder(z), mu, log_sigma  # logits [B, C, H, W]


# ----------------------------------------------------------------------------------------
# Loss (the schedule is dae.py's: common.daly_learning_rate)
# ----------------------------------------------------------------------------------------


def kl_divergence(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per sample [B], summed over the latent units."""
    mu, log_sigma = mu.float(), log_sigma.float()
    return 0.5 * (torch.exp(2 * log_sigma) + mu.square() - 1 - 2 * log_sigma).sum(1)


def reconstruction_loss(logits: torch.Tensor, x: torch.Tensor, loss: str) -> torch.Tensor:
    """-log p(x|z) up to constants, mean over the batch: BCE averaged over pixels (bce), or
    squared error summed over positions, averaged over channels (gaussian)."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits.float(), x)
    squared = (torch.sigmoid(logits.float()) - x).square()
    return squared.mean(1).flatten(1).sum(1).mean()


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------


def train(args: Args, given: set):
    args, checkpoint, device, train_images, test_images = common.start(args, given, "vae")
    data_shape = train_images.shape[1], train_images.shape[-1]  # channels, image size
    beta = kl_weight(args)
    model = VAE(args, *data_shape).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, eps=1e-7)
    folder, start_epoch = common.open_run("vae", args, checkpoint, model, optimizer)
    forward = common.parallel(model, args.compile, args.sync_bn)  # DDP under torchrun
    print(f"{args.loss} reconstruction + {beta:.4g} KL")

    batch = common.local_batch(args.batch_size)  # this process's share (torchrun)
    steps = len(train_images) // batch
    state = checkpoint  # a resumed run that had finished all its epochs refits its samplers
    for epoch in range(start_epoch, args.epochs):
        lr = common.daly_learning_rate(epoch, args.epochs, args.lr, args.warmup_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        started, sums = time.time(), torch.zeros(2, device=device)
        bar = common.progress(common.batches(train_images, batch, args.seed, epoch),
                              total=steps, desc=f"epoch {epoch + 1}/{args.epochs}")
        for step, x in enumerate(bar):
            with common.autocast(device):
                logits, mu, log_sigma = forward(x)
            reconstruction = reconstruction_loss(logits, x, args.loss)
            kl = kl_divergence(mu, log_sigma).mean()
            loss = reconstruction + beta * kl  # negative ELBO with a weighted KL
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([reconstruction, kl]).detach()
            if step % 50 == 0:  # a sync every 50 steps: progress bar and divergence check
                bar.set_postfix(rec=f"{reconstruction.item():.4f}", kl=f"{kl.item():.1f}")
                common.stop_if_diverged(loss.item(), epoch, folder)
        reconstruction, kl = (common.mean_over_processes(sums) / steps).tolist()
        common.stop_if_diverged(reconstruction + beta * kl, epoch, folder)
        seconds = time.time() - started
        common.log_epoch(folder, {"epoch": epoch + 1, "reconstruction": reconstruction, "kl": kl,
                                  "lr": lr, "seconds": seconds,
                                  "images_per_sec": steps * args.batch_size / seconds})
        common.save_test_reconstructions(model, test_images, folder)
        state = common.save_epoch(folder, "vae", args, epoch, model, optimizer, data_shape)

    # The prior N(0, I) is the VAE's own sampler; MVG and GMM are fitted on the means.
    common.fit_ex_post(state, model, train_images, test_images, folder, args.seed,
                       args.gmm_components)
    print(f"done: grids, log.jsonl and checkpoint in {folder}")
    return folder


# ----------------------------------------------------------------------------------------
# Sampling, and the functions eval.py calls
# ----------------------------------------------------------------------------------------


def load_run(run_dir: str, device: str = "cpu") -> common.Run:
    """A trained run: the model in eval mode on `device` and its samplers."""
    return common.load_run(run_dir, device, lambda args, shape: VAE(Args(**args), *shape))


# encode gives the means mu; decode(sample(N(0, I))) is the VAE's own generation.
encode, decode, sample = common.encode, common.decode, common.sample


def paper_fid(args: dict, ref: str = "test") -> dict:
    """The papers' FIDs for this run's setting (official weights only), by column."""
    if ref != "test" or args["kl_weight"] >= 0:
        return {}
    if args["loss"] == "bce" and (args["filters"], args["latent_dim"]) != (128, 128):
        return {}
    return PAPER_FID.get((args["dataset"], args["loss"], args["fixed_std"] > 0), {})


def main(args: Args, given: set):
    train(args, given)


if __name__ == "__main__":
    common.cli(main, Args, __doc__)
