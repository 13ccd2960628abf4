"""VAE baselines: the beta-VAE of Daly et al. (2022) and the VAE / constant-variance VAE of
Ghosh et al. (2020), on the common backbone. From common.py: Encoder, Decoder,
daly_learning_rate, fit_samplers (MVG and GMM on the means, beside the prior); the data,
its batches and encode / sample / decode; the run machinery of its part two.

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

    L(x) = E_q(z|x)[-log p(x|z)] + beta KL(q(z|x) || N(0, I))            Daly et al. Sec. 1
    KL = 1/2 sum_j (sigma_j^2 + mu_j^2 - 1 - log sigma_j^2)              closed form
    CV-VAE: sigma_j = s fixed, KL = 1/2 ||mu||^2 + d/2 (s^2 - 1 - log s^2)

Reproduce (FID with `python eval.py RUN_DIR`):
    Daly et al. Table 2, CIFAR-10, f=128, 128 latents (REC 76.20, N(0,I) 99.62, MVG 101.9,
    GMM 94.21):
        python vae.py --dataset cifar10
    Table 2, other widths: --filters 32 | 64 | 256; Table 3, best latent sizes: e.g.
        python vae.py --dataset cifar10 --filters 128 --latent-dim 384   # GMM 80.01
    Ghosh et al. Table 1, VAE and CV-VAE (their figures: VAE REC 57.94, N 106.37, GMM
    103.78; CV-VAE REC 37.74, GMM 86.64), approximately (see Deviations):
        python vae.py --dataset cifar10 --loss gaussian --lr 1e-4 --warmup-lr 1e-4 --batch-size 100
        python vae.py --dataset cifar10 --loss gaussian --fixed-std 0.7 --lr 1e-4 \
            --warmup-lr 1e-4 --batch-size 100 --epochs 70
    Other data sets: --dataset mnist --latent-dim 16; --dataset celeba --data-root DATA
    --latent-dim 64 (Ghosh et al.'s CelebA VAE: batch 1000, 70 epochs; their CV-VAE: 64
    filters, 70 epochs).

Deviations and choices:
  - Backbone, optimiser and schedule as dae.py (Daly et al.: Adam, one warm-up epoch at
    1e-4, then 1e-3, x0.1 at 33% and 66% of 100 epochs, batch 128).
  - Ghosh et al.'s VAEs (official code) differ from this file in ways their command lines
    above do not all remove, so eval.py prints none of their figures beside ours: they
    trained with Adam 1e-4 halved on a validation plateau (here: the step schedule at
    1e-4); the CIFAR-10 CV-VAE and the CelebA VAE and CV-VAE ran 70 epochs, the CelebA
    CV-VAE with 64 filters and the CelebA VAE with batches of 1000; their REC column
    decodes a z sampled from q(z|x), ours decodes the mean mu (as eval.py does for every
    method). Not measured here.
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
  - Under torchrun each process draws its own noise; the KL and reconstruction terms are
    per image, so only the batch norms see how a batch is split (README, "Several GPUs").
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from common import arg

# Ghosh et al.'s KL weights for --loss gaussian: (learned sigma, fixed sigma) per data set.
GAUSSIAN_KL_WEIGHT = {"mnist": (0.312, 0.039), "cifar10": (0.024, 9e-4),
                      "celeba": (0.09024, 0.01)}


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
    schedule_epochs: int = arg(0, "epochs the lr schedule spans; 0: --epochs (a run resumed "
                               "with more --epochs keeps its own schedule)", low=0)
    batch_size: int = arg(128, "batch size", low=1)
    lr: float = arg(1e-3, "learning rate; x0.1 at 33%% and again at 66%% of the epochs", low=0)
    warmup_lr: float = arg(1e-4, "learning rate of the first (warm-up) epoch", low=0)
    gmm_components: int = arg(10, "components of the ex-post GMM", low=1)
    seed: int = arg(0, "seed of initialisation, batch order, noise and samplers")
    device: str = arg("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    compile: bool = arg(False, "torch.compile the model (worth it on CUDA only)")
    sync_bn: bool = arg(False, "torchrun: batch-norm statistics over all processes (SyncBatchNorm)")
    out_dir: str = arg("runs", "parent folder of the run folders")
    resume: str = arg("", "run folder to continue from its last checkpoint")


def kl_weight(args: Args) -> float:
    if args.kl_weight >= 0:
        return args.kl_weight
    if args.loss == "bce":
        return 0.01
    return GAUSSIAN_KL_WEIGHT.get(args.dataset, GAUSSIAN_KL_WEIGHT["cifar10"])[args.fixed_std > 0]


# -- Model: Gaussian encoder on the common backbone, decoder as dae.py -------------------
class GaussianEncoder(nn.Module):
    """x -> mu (forward: what eval.py and the ex-post samplers use) or (mu, log sigma)."""

    def __init__(self, args: Args, channels: int, image_size: int):
        super().__init__()
        self.d, self.fixed_std = args.latent_dim, args.fixed_std
        heads = 1 if args.fixed_std > 0 else 2  # CV-VAE: no sigma head
        self.features = common.Encoder(channels, image_size, args.filters, args.depth)
        self.heads = nn.Linear(self.features.out_features, heads * args.latent_dim)
        common.keras_init(self.heads)

    def moments(self, x):
        h = self.heads(self.features(x))  # [B, heads * d]
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


# -- Loss (the schedule is dae.py's: common.daly_learning_rate) --------------------------
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


def vae_loss(logits, x, mu, log_sigma, loss: str, beta: float) -> dict:
    """The negative ELBO with a weighted KL (Daly et al. Sec. 1), mean over the batch:
    E_q[-log p(x|z)] (one z per image) + beta KL(q(z|x) || N(0, I))."""
    terms = {"reconstruction": reconstruction_loss(logits, x, loss),
             "kl": kl_divergence(mu, log_sigma).mean()}
    terms["loss"] = terms["reconstruction"] + beta * terms["kl"]
    return terms


# -- Training ----------------------------------------------------------------------------
def train(args: Args, given: set):
    args, checkpoint, device, train_images, test_images = common.start(args, given, "vae")
    data_shape = tuple(train_images.shape[1:3])  # channels, image size (square images)
    beta = kl_weight(args)
    model = VAE(args, *data_shape).to(device)
    model = model.to(memory_format=common.memory_format(device))  # channels_last on CUDA
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, eps=1e-7)
    folder, start_epoch = common.open_run("vae", args, checkpoint, model, optimizer)
    wrapped = common.parallel(model, args.compile, args.sync_bn)  # DDP (torchrun), compiled
    print(f"{args.loss} reconstruction + {beta:.4g} KL")

    state = checkpoint  # (a run resumed with no epoch left to train: its own)
    for epoch in range(start_epoch, args.epochs):
        lr = common.set_lr(optimizer, common.daly_learning_rate(
            epoch, args.schedule_epochs or args.epochs, args.lr, args.warmup_lr))
        model.train()
        steps = common.Epoch(folder, args.seed, epoch, args.batch_size, total=args.epochs)
        for x in steps.batches(train_images):  # [B, C, H, W] in [0, 1]
            with common.autocast(device):
                logits, mu, log_sigma = wrapped(x)
            terms = vae_loss(logits, x, mu, log_sigma, args.loss, beta)  # negative ELBO
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            steps.add(**terms)
        steps.end(lr=lr)  # the epoch's mean of each term, in log.jsonl
        common.save_test_reconstructions(model, test_images, folder)
        state = common.save_epoch(folder, "vae", args, epoch, model, optimizer, data_shape)

    # The prior N(0, I) is the VAE's own sampler; MVG and GMM are fitted on the means.
    codes = common.gather_rows(common.encode_all(model.eval().encoder, train_images))  # [N, d]
    samplers = common.fit_samplers(codes, args.seed, args.gmm_components)
    common.keep_samplers(state, samplers, model, test_images, folder, args.seed)  # checkpoint
    print(f"done: grids, log.jsonl and checkpoint in {folder}")
    return folder


# -- Sampling, and the functions eval.py calls -------------------------------------------
def load_run(run_dir: str, device: str = "cpu") -> common.Run:
    """A trained run: the model in eval mode on `device` and its samplers."""
    return common.load_run(run_dir, device, lambda args, shape: VAE(Args(**args), *shape))


# encode gives the means mu; decode(sample(N(0, I))) is the VAE's own generation.
encode, decode, sample = common.encode, common.decode, common.sample


def main(args: Args, given: set):
    train(args, given)


# -- The paper's figures, which eval.py prints beside ours -----------------------------
# Daly et al.'s VAE FIDs (Tables 2 and 3, test-set reference), which eval.py prints beside
# ours, keyed by PAPER_KEY. Table 2's CelebA rows are left out: its caption gives them 64
# latents, but its 128-filter DAE row is Table 3's at 128.
PAPER_KEY = ("dataset", "filters", "latent_dim")
PAPER_FID = {
    ("cifar10", 32, 128): {"rec": 79.06, "normal": 100.1, "mvg": 101.0, "gmm": 94.40},
    ("cifar10", 64, 128): {"rec": 78.35, "normal": 99.49, "mvg": 101.0, "gmm": 93.60},
    ("cifar10", 128, 128): {"rec": 76.20, "normal": 99.62, "mvg": 101.9, "gmm": 94.21},
    ("cifar10", 256, 128): {"rec": 93.49, "normal": 112.0, "mvg": 112.5, "gmm": 108.6},
    ("cifar10", 32, 256): {"rec": 62.69, "normal": 96.14, "mvg": 95.77, "gmm": 87.67},
    ("cifar10", 32, 384): {"rec": 56.07, "normal": 95.29, "mvg": 95.25, "gmm": 88.77},
    ("cifar10", 32, 512): {"rec": 52.08, "normal": 96.59, "mvg": 94.79, "gmm": 89.14},
    ("cifar10", 64, 384): {"rec": 51.59, "normal": 89.77, "mvg": 89.92, "gmm": 82.35},
    ("cifar10", 64, 512): {"rec": 46.01, "normal": 90.95, "mvg": 89.45, "gmm": 83.06},
    ("cifar10", 128, 384): {"rec": 46.98, "normal": 87.29, "mvg": 86.65, "gmm": 80.01},
    ("cifar10", 256, 512): {"rec": 39.50, "normal": 82.34, "mvg": 83.45, "gmm": 78.95},
    ("cifar10", 256, 768): {"rec": 37.27, "normal": 87.68, "mvg": 85.25, "gmm": 78.91},
    ("celeba", 32, 768): {"rec": 39.83, "normal": 54.53, "mvg": 52.10, "gmm": 48.03},
    ("celeba", 64, 768): {"rec": 38.42, "normal": 50.34, "mvg": 47.73, "gmm": 43.23},
    ("celeba", 128, 384): {"rec": 40.04, "normal": 49.09, "mvg": 49.07, "gmm": 47.30},
    ("celeba", 128, 768): {"rec": 36.93, "normal": 50.67, "mvg": 47.70, "gmm": 42.91},
}
# Each figure above: 10,000 samples against the 10,000 test images (Daly et al. Sec. 4);
# eval.py prints it beside ours only for as many samples, against the whole test split.
PAPER_SAMPLES = 10_000


def paper_settings(key: tuple) -> dict:
    """Every setting of the paper's run that PAPER_FID[key] reports: the key's, and Args'
    defaults (Daly et al.'s: --loss bce, beta 0.01) for the rest."""
    return {**dataclasses.asdict(Args()), **dict(zip(PAPER_KEY, key))}


def paper_fid(args: dict, ref: str = "test") -> dict:
    """Daly et al.'s FIDs for this run, a reported setting (common.paper_row); not Ghosh et
    al.'s VAE rows: this file does not train with their schedule (Deviations)."""
    return common.paper_row(args, ref, PAPER_FID, PAPER_KEY, paper_settings)


if __name__ == "__main__":
    common.cli(main, Args, __doc__)
