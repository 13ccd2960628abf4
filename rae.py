"""Regularized autoencoders: RAE-L2, RAE-GP, RAE-SN, RAE and AE (Ghosh et al. 2020).

From common.py: Encoder, Decoder, keras_init, spectral_norm (Keras' matrix), fit_samplers
(the ex-post MVG and GMM); the data, its batches and encode / sample / decode; the run
machinery of its part two. Paper: "From Variational to Deterministic Autoencoders", P. Ghosh,
M. S. M. Sajjadi, A. Vergari, M. Black and B. Schoelkopf, ICLR 2020,
https://openreview.net/forum?id=S1g7tpEYDS; github.com/ParthaEth/Regularized_autoencoders-RAE-

The method. A VAE can be read as a deterministic autoencoder whose decoder is fed noisy
codes: the noise makes the decoder smooth and the KL term keeps the codes small. RAEs keep
those two effects and drop the sampling: a deterministic encoder, a penalty on the size of
the code (L_z), and an explicit regulariser of the decoder (L_REG): an L2 penalty on its
weights, a gradient penalty, or spectral normalisation. Without a prior to sample from, a
density is fitted to the training codes after training (ex-post density estimation: a
10-component GMM, or one full-covariance Gaussian) and its samples are decoded.

    L_REC = ||x - D(E(x))||_2^2                                   Eq. (9)
    L_z   = 1/2 ||z||_2^2,  z = E(x)                               Eq. (10)
    L     = L_REC + beta L_z + lambda L_REG                        Eq. (11)
    RAE-GP: L_REG = ||grad_z ||D(z)||^2 ||_2^2                     Eq. (12)
    RAE-L2: L_REG = ||theta_D||_2^2                                 Eq. (13)
    RAE-SN: D spectrally normalised (lambda = 0); RAE: L_z only; AE: neither.

Reproduce (FID with `python eval.py RUN_DIR`; Table 1's N column for RAEs is a fitted
Gaussian, our MVG. Its REC and Interp are of the official validation images, x_train[10000:],
mostly training images, so eval.py prints them beside none of ours, which are of test
images). V: rae-l2, rae-gp, rae-sn, rae or ae, each with its data set's official beta, lambda:
    CIFAR-10 (Table 1 GMM: RAE-L2 74.16, RAE-GP 76.33, RAE-SN 75.30, RAE 76.28, AE 76.47;
    the official RAE-GP ran 70 epochs, add --epochs 70; the official RAE-SN normalised
    every layer, add --sn-layers all, as for every data set):
        python rae.py --dataset cifar10 --variant V
    MNIST (padded to 32x32, latent 16; GMM: 8.69, 11.54, 11.74, 9.81, 10.66):
        python rae.py --dataset mnist --latent-dim 16 --variant V
    CelebA 64x64 (crop 140, latent 64, lr 1e-3, 70 epochs; GMM: 47.97, 45.63, 40.95, 44.68,
    45.10):
        python rae.py --dataset celeba --data-root DATA --latent-dim 64 --lr 1e-3 --epochs 70 \\
            --variant V
    RAE-SN as the paper says (the decoder only; no Table 1 figure): --variant rae-sn

Loss scale. The official code averages: mean squared error over the P pixels, beta_code *
mean_d z^2, gamma_code * mean_d (grad)^2, lambda_code * sum W^2. This file sums as the
paper's equations; multiplying the code's loss by P gives ours with
    beta = 2 P beta_code / d,   lambda (L2) = P lambda_code,   lambda (GP) = P gamma_code / d,
and --beta / --reg-weight set to -1 take the official per-data-set values so converted.

Deviations and choices:
  - Backbone as dae.py (common.py): the official MNIST/CIFAR net, 5x5 kernels for CelebA;
    Keras init, batch-norm constants and TensorFlow 'same' padding; sigmoid output. Inputs
    are mapped to [-1, 1] for every data set; the official code does so for MNIST and
    CIFAR-10, not for CelebA (not measured).
  - CIFAR-10 RAE-GP: the official entry has gamma 0 (a stale copy of the CV-VAE entry);
    we use CelebA's gamma_code 1e-7 with its beta_code 9e-4.
  - RAE-L2 penalises decoder kernels only (no biases, no BN): the transposed convs always
    (the output layer is one), the first Dense only for CelebA, as the official code.
    RAE-GP differentiates the squared output norm with respect to z through the decoder
    (official; pythae uses the input image).
  - RAE-SN: spectral normalisation (one power iteration per step) of the decoder, as the
    paper says; --sn-layers all does every layer, as the official code. The normalised
    matrix is Keras' (common.spectral_norm): for a transposed conv [k k out, in], not
    PyTorch's default [out, in k k]. BN is kept.
  - Learning rate: Keras 2.3.1's ReduceLROnPlateau as the official code runs it (factor
    0.5, patience 5, min_delta 1e-4 on the mean-scale loss, so 1e-4 P on ours; halve when
    5 epochs in a row were not better, then count again); PyTorch's own scheduler would
    use a relative threshold and halve one epoch later (KerasPlateau).
  - Training images as the official data loader: MNIST and CIFAR-10 train on their first
    50,000 / 40,000 training images, CelebA on its train partition. Validation images (their
    loss drives the lr halving): not the official ones. The official code validates MNIST and
    CIFAR-10 on x_train[10000:], 50,000 / 40,000 images of which 40,000 / 30,000 are training
    images, and that loss also picks its `_best` checkpoint; we validate on the last 10,000,
    which the model never trains on, so that the plateau reacts to held-out loss (the
    official split reads as a slip: its held-out part is the last 10,000 too). CelebA: its
    valid partition (official); other data sets: their last tenth. The split is stored in
    the checkpoint, and a run whose split differs is not resumed. Ex-post densities on the
    training codes (official). We keep the last epoch, not the best (not measured). The
    official batches come in file order (its iterator ignores `shuffle`); ours are shuffled
    every epoch (not measured).
  - GMM: scikit-learn, 10 components, full covariance, max_iter 2000, tol 1e-3 (official).
  - Under torchrun the validation loss is averaged over the processes, so all halve the
    learning rate at once; L_z, the L2, GP and SN terms are per image or per weight and do
    not depend on how a batch is split (README, "Several GPUs").
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

import common
from common import arg

VARIANTS = ("rae-l2", "rae-gp", "rae-sn", "rae", "ae")
# Validation images at the end of the training split (official data loader); CelebA has its
# own valid partition, other data sets give their last tenth.
VALIDATION = {"mnist": 10000, "cifar10": 10000}
# Official (beta_code, regulariser_code) per data set and variant (configurations/config.py).
OFFICIAL = {
    "mnist": {"rae-gp": (1e-4, 5e-8), "rae-l2": (1e-4, 1e-7), "rae-sn": (9e-3, 0),
              "rae": (5e-4, 0), "ae": (0, 0)},
    "cifar10": {"rae-gp": (9e-4, 1e-7), "rae-l2": (1e-3, 1e-6), "rae-sn": (3e-2, 0),
                "rae": (1e-2, 0), "ae": (0, 0)},
    "celeba": {"rae-gp": (1e-4, 1e-7), "rae-l2": (1e-4, 1e-7), "rae-sn": (2.4e-3, 0),
               "rae": (1e-4, 0), "ae": (0, 0)},
}


@dataclass
class Args:
    dataset: str = arg("cifar10", "data set", choices=common.DATASETS)
    data_root: str = arg("data", "folder of the data set (torchvision downloads into it)")
    image_size: int = arg(0, "image side; 0: the data set's own (64 for celeba, else 32)", low=0)
    crop: int = arg(0, "centre crop before resizing; 0: 140 for celeba, none otherwise", low=0)
    variant: str = arg("rae-l2", "regulariser of the decoder", choices=VARIANTS)
    beta: float = arg(-1.0, "weight of L_z = ||z||^2 / 2; -1: official for the data set")
    reg_weight: float = arg(-1.0, "lambda of L_REG (L2 or GP); -1: official for the data set")
    sn_layers: str = arg("decoder", "RAE-SN: spectral norm on the decoder (paper) or all "
                         "layers (official code)", choices=("decoder", "all"))
    filters: int = arg(128, "filter base f: encoder stages have f, 2f, 4f, 8f filters", low=1)
    depth: list[int] = arg([1], "convs per stage (strided last): one value or four", low=1)
    latent_dim: int = arg(128, "latent units: 128 CIFAR-10, 16 MNIST, 64 CelebA", low=1)
    epochs: int = arg(100, "training epochs (70 for CelebA)", low=1)
    batch_size: int = arg(100, "batch size", low=1)
    lr: float = arg(5e-4, "Adam learning rate (1e-3 for CelebA)", low=0)
    patience: int = arg(5, "halve the lr after this many epochs in a row without a better "
                        "validation loss (Keras: better = lower by 1e-4 per pixel)", low=1)
    gmm_components: int = arg(10, "components of the ex-post GMM", low=1)
    seed: int = arg(0, "seed of initialisation, batch order and samplers")
    device: str = arg("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    compile: bool = arg(False, "torch.compile the model (worth it on CUDA only)")
    sync_bn: bool = arg(False, "torchrun: batch-norm statistics over all processes (SyncBatchNorm)")
    out_dir: str = arg("runs", "parent folder of the run folders")
    resume: str = arg("", "run folder to continue from its last checkpoint")


def weights(args: Args, pixels: int) -> tuple[float, float]:
    """(beta, lambda) of Eq. (11) for summed losses: the flags, or the official values
    converted (docstring: loss scale)."""
    beta_code, reg_code = OFFICIAL.get(args.dataset, OFFICIAL["cifar10"])[args.variant]
    beta = args.beta if args.beta >= 0 else 2 * pixels * beta_code / args.latent_dim
    per_unit = pixels / args.latent_dim if args.variant == "rae-gp" else pixels
    return beta, args.reg_weight if args.reg_weight >= 0 else per_unit * reg_code


# -- Model: the common backbone; spectral norm for RAE-SN --------------------------------
class RAE(nn.Module):
    def __init__(self, args: Args, channels: int, image_size: int):
        super().__init__()
        features = common.Encoder(channels, image_size, args.filters, args.depth)
        code = nn.Linear(features.out_features, args.latent_dim)
        common.keras_init(code)
        self.encoder = nn.Sequential(features, code)
        self.decoder = common.Decoder(channels, image_size, args.filters, args.depth,
                                      args.latent_dim)
        if args.variant == "rae-sn":  # Sec. 4.1: the decoder; the official code: every layer
            common.spectral_norm(self.decoder, *([self.encoder] if args.sn_layers == "all" else []))

    def forward(self, x):  # x [B, C, H, W] in [0, 1]
        z = self.encoder(x)  # [B, d]
        return self.decoder(z), z  # logits [B, C, H, W], codes [B, d]


# -- Losses: Eqs. (9)-(13) ---------------------------------------------------------------
def reconstruction_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Eq. (9): squared error summed over pixels, mean over the batch."""
    return (torch.sigmoid(logits.float()) - x).square().flatten(1).sum(1).mean()


def latent_loss(z: torch.Tensor) -> torch.Tensor:
    """Eq. (10): ||z||^2 / 2, mean over the batch."""
    return 0.5 * z.float().square().sum(1).mean()


def gradient_penalty(z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Eq. (12): ||d ||D(z)||^2 / dz||^2, mean over the batch, from the forward pass's own
    graph (logits = D(z)) and differentiable, as it is trained through. With BN in train
    mode a sample's output depends on its batch, so the gradient of the batch's summed
    squared norms is taken, as the official code does."""
    output_norm = torch.sigmoid(logits.float()).square().sum()
    (grad,) = torch.autograd.grad(output_norm, z, create_graph=True)
    return grad.square().sum(1).mean()


def decoder_l2(model: RAE, include_dense: bool) -> torch.Tensor:
    """Eq. (13): sum of the squared kernels of the decoder's transposed convs, and of its
    first Dense layer if include_dense (the official CelebA model)."""
    layers = [m for m in model.decoder.modules()  # its transposed convs (and the convs of
              if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]  # a deeper decoder)
    layers += [model.decoder.from_latent] if include_dense else []
    return sum(m.weight.square().sum() for m in layers)


def loss_terms(model: RAE, x: torch.Tensor, args: Args, wrapped=None) -> dict:
    """L_REC, L_z and L_REG of a batch (L_REG 0 where the variant has none). The forward
    pass goes through `wrapped` (the model in DDP or compiled, in training) when given; the
    L2 penalty reads the weights of `model` itself."""
    logits, z = (wrapped or model)(x)
    terms = {"reconstruction": reconstruction_loss(logits, x), "code_penalty": latent_loss(z)}
    if args.variant == "rae-gp":
        terms["decoder_penalty"] = gradient_penalty(z, logits)
    elif args.variant == "rae-l2":
        terms["decoder_penalty"] = decoder_l2(model, include_dense=args.dataset == "celeba")
    else:
        terms["decoder_penalty"] = torch.zeros((), device=x.device)
    return terms


def rae_loss(terms: dict, beta: float, reg_weight: float) -> torch.Tensor:
    """Eq. (11): L_REC + beta L_z + lambda L_REG."""
    return (terms["reconstruction"] + beta * terms["code_penalty"]
            + reg_weight * terms["decoder_penalty"])


class KerasPlateau:
    """The official schedule, Keras 2.3.1's ReduceLROnPlateau(factor=0.5, patience=5) with its
    defaults (min_delta 1e-4, absolute; cooldown 0): an epoch counts as better when its
    validation loss is below the best so far minus min_delta; after `patience` epochs in a
    row that are not, the learning rate halves and the count restarts."""

    def __init__(self, optimizer, patience: int, min_delta: float, factor: float = 0.5):
        self.optimizer, self.patience, self.min_delta, self.factor = (
            optimizer, patience, min_delta, factor)
        self.best, self.wait = math.inf, 0

    def step(self, val_loss: float):
        if val_loss < self.best - self.min_delta:
            self.best, self.wait = val_loss, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.factor
            self.wait = 0

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict):
        self.best, self.wait = state["best"], state["wait"]


# -- Training ----------------------------------------------------------------------------
def validation_split(args: Args, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) images of this process, from its shard of the training
    split: CelebA's valid partition, else the last images of the split (VALIDATION)."""
    if args.dataset == "celeba":
        valid = common.load_images("celeba", args.data_root, "valid", args.image_size, args.crop)
        return images, common.shard(valid).to(images.device)
    every = common.gather_rows(images)  # the whole split, in order
    n_val = VALIDATION.get(args.dataset, len(every) // 10)
    return common.shard(every[:len(every) - n_val]), common.shard(every[len(every) - n_val:])


def data_splits(run_args: dict, data_root: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(the images a run trained on, its validation images), uint8, as it split them."""
    args = dataclasses.replace(Args(**run_args), data_root=data_root)
    return validation_split(args, common.run_images(args, "train"))


def train(args: Args, given: set):
    args, checkpoint, device, train_images, test_images = common.start(args, given, "rae")
    train_images, val_images = validation_split(args, train_images)
    held = len(val_images) * common.world()[1]  # validation images, every process's
    if checkpoint is not None and checkpoint.get("validation_images") != held:
        raise common.UserError(f"{args.resume} was trained with another validation split than "
                               f"this rae.py's ({held} images): resumed, its training images "
                               f"would change; start a new run")
    if common.local_batch(args.batch_size) > len(train_images):
        raise common.UserError(f"--batch-size {args.batch_size} is larger than the "
                               f"{len(train_images)} training images left after validation")
    data_shape = tuple(train_images.shape[1:3])  # channels, image size (square images)
    pixels = data_shape[0] * data_shape[1] ** 2  # P
    beta, reg_weight = weights(args, pixels)
    print(f"{args.variant}: beta {beta:.4g}, lambda {reg_weight:.4g} (summed losses)")
    model = RAE(args, *data_shape).to(device)
    model = model.to(memory_format=common.memory_format(device))  # channels_last on CUDA
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, eps=1e-7)
    # Keras' min_delta 1e-4 on the official mean-scale loss is 1e-4 P on our summed loss.
    plateau = KerasPlateau(optimizer, args.patience, min_delta=1e-4 * pixels)
    folder, start_epoch = common.open_run("rae", args, checkpoint, model, optimizer)
    if checkpoint is not None:
        plateau.load_state_dict(checkpoint["plateau"])
    # RAE-GP differentiates twice, which compiled graphs do not support: it runs eagerly.
    wrapped = common.parallel(model, args.compile and args.variant != "rae-gp", args.sync_bn)

    state = checkpoint  # (a run resumed with no epoch left to train: its own)
    for epoch in range(start_epoch, args.epochs):
        model.train()
        steps = common.Epoch(folder, args.seed, epoch, args.batch_size, total=args.epochs)
        for x in steps.batches(train_images):  # [B, C, H, W] in [0, 1]
            with common.autocast(device):
                terms = loss_terms(model, x, args, wrapped)
            terms["loss"] = rae_loss(terms, beta, reg_weight)  # Eq. (11)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            steps.add(**terms)
        model.eval()  # validation loss (BN with running statistics) drives the lr
        with torch.enable_grad() if args.variant == "rae-gp" else torch.no_grad():
            val = sum(len(x) * rae_loss(loss_terms(model, x.float() / 255, args), beta,
                                        reg_weight).item()
                      for x in val_images.split(args.batch_size))
        # The mean over the validation images, as Keras' evaluation weighs its batches.
        validation_loss = common.mean_over_processes(torch.tensor(val / len(val_images))).item()
        common.stop_if_diverged(validation_loss, epoch, folder)
        lr = optimizer.param_groups[0]["lr"]
        plateau.step(validation_loss)
        steps.end(validation_loss=validation_loss, lr=lr)  # the epoch's means, in log.jsonl
        common.save_test_reconstructions(model, test_images, folder)
        state = common.save_epoch(folder, "rae", args, epoch, model, optimizer, data_shape,
                                  plateau=plateau.state_dict(), validation_images=held)

    # Ex-post density estimation on the codes of the training split.
    codes = common.gather_rows(common.encode_all(model.eval().encoder, train_images))  # [N, d]
    samplers = common.fit_samplers(codes, args.seed, args.gmm_components)
    common.keep_samplers(state, samplers, model, test_images, folder, args.seed)  # checkpoint
    print(f"done: grids, log.jsonl and checkpoint in {folder}")
    return folder


# -- Sampling, and the functions eval.py calls -------------------------------------------
def load_run(run_dir: str, device: str = "cpu") -> common.Run:
    """A trained run: the model in eval mode on `device` and its fitted samplers."""
    return common.load_run(run_dir, device, lambda args, shape: RAE(Args(**args), *shape))


# decode(sample(MVG | GMM)) is how an RAE generates; N(0, I) is offered for comparison.
encode, decode, sample = common.encode, common.decode, common.sample


def main(args: Args, given: set):
    train(args, given)


# -- The paper's figures, which eval.py prints beside ours -----------------------------
# Table 1's sample FIDs (test-set reference), keyed by PAPER_KEY: its N column (a fitted
# Gaussian: our MVG) and GMM. (Its REC and Interp are of validation images: docstring.)
PAPER_KEY = ("dataset", "variant")
PAPER_FID = {(dataset, variant): {"mvg": n, "gmm": gmm} for dataset, row in {
    "cifar10": {"rae-gp": (83.05, 76.33), "rae-l2": (80.80, 74.16), "rae-sn": (84.25, 75.30),
                "rae": (83.87, 76.28), "ae": (84.74, 76.47)},
    "mnist": {"rae-gp": (22.21, 11.54), "rae-l2": (22.22, 8.69), "rae-sn": (19.67, 11.74),
              "rae": (23.92, 9.81), "ae": (24.32, 10.66)},
    "celeba": {"rae-gp": (116.30, 45.63), "rae-l2": (51.13, 47.97), "rae-sn": (44.74, 40.95),
               "rae": (48.20, 44.68), "ae": (127.85, 45.10)},
}.items() for variant, (n, gmm) in row.items()}
# Each figure above: 10,000 samples (the official evaluation code); eval.py prints it
# beside ours only for as many samples, against the whole test split.
PAPER_SAMPLES = 10_000


def paper_settings(key: tuple) -> dict:
    """Every setting of the official run of Table 1's row `key` (configurations/config.py):
    latent units, learning rate and epochs per data set (CIFAR-10 RAE-GP: 70 epochs),
    spectral norm on every layer for RAE-SN (spec_norm_on_dec_only False), the rest as
    Args' defaults (batch 100, f 128, official weights)."""
    dataset, variant = key
    latent, lr, epochs = {"mnist": (16, 5e-4, 100), "cifar10": (128, 5e-4, 100),
                          "celeba": (64, 1e-3, 70)}[dataset]
    if key == ("cifar10", "rae-gp"):
        epochs = 70
    sn_layers = "all" if variant == "rae-sn" else Args().sn_layers
    return {**dataclasses.asdict(Args()), "dataset": dataset, "variant": variant,
            "latent_dim": latent, "lr": lr, "epochs": epochs, "sn_layers": sn_layers}


def paper_fid(args: dict, ref: str = "test") -> dict:
    """Table 1's sample FIDs (N as our MVG, GMM) for this run: only for the official run of
    its data set and variant (common.paper_row). Its REC and Interp: docstring."""
    return common.paper_row(args, ref, PAPER_FID, PAPER_KEY, paper_settings)


if __name__ == "__main__":
    common.cli(main, Args, __doc__)
