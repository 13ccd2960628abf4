"""Entropic autoencoder: batch-normed latent with entropic regularisation (Ghose et al. 2020).

From common.py: Encoder, Decoder, keras_init, spectral_norm, normal_sampler and
fit_samplers; the data, its batches and encode / sample / decode; the run machinery of its
part two. Paper: "Batch norm with entropic regularization turns deterministic
autoencoders into generative models", A. Ghose, A. Rashwan and P. Poupart, UAI 2020,
https://arxiv.org/abs/2002.10631

The method. The code of a deterministic autoencoder goes through a batch norm without
affine parameters, so that over every minibatch each code dimension has mean 0 and
variance 1. With those two moments fixed, the distribution of maximum entropy is the
standard normal, and the KL divergence of the code distribution q to N(0, I) is
(d/2) log(2 pi e) - H(q) (Sec. 3.1): maximising an estimate of H over the minibatch
therefore pulls q towards N(0, I), with no KL term per instance and no sampling. The
entropy is estimated with the Kozachenko-Leonenko k-nearest-neighbour estimator. New
images are decoded samples of N(0, I) (the paper's point); MVG and GMM fitted ex post on
the codes are offered too, and the paper finds they help further.

Key equations:
    z = BN(E(x)),  BN without affine: per-dimension batch mean 0, variance 1      Sec. 3
    L = (1/B) sum_i ||x_i - D(z_i)||^2  -  lambda * H_hat(z_1 .. z_B)              Eq. (2)
    H_hat = psi(B) - psi(k) + log V_d + (d/B) sum_i log eps_i,k    Kozachenko-Leonenko, Sec. 3.2
        V_d = pi^(d/2) / Gamma(d/2 + 1), the volume of the unit d-ball
        eps_i,k = distance from z_i to its k-th nearest neighbour in the batch
    KL(q || N(0, I)) = (d/2) log(2 pi e) - H(q)   when BN fixes the first two moments

Reproduce (FID with `python eval.py RUN_DIR`; the paper's Table 1: CIFAR-10 N(0, I) 85.26,
MVG 80.07, GMM 73.12, REC 29.77; CelebA N(0, I) 44.63, MVG 42.92, GMM 39.76, REC 40.26):
    CIFAR-10 (L2 regularisation, exponential learning-rate decay):
        python eae.py --dataset cifar10 --latent-dim 128
    CelebA 64x64 (centre crop 140; spectral normalisation instead of L2):
        python eae.py --dataset celeba --data-root DATA --latent-dim 64 --lr 1e-3 --epochs 70
    MNIST (Fig. 1, lambda 0.05 and 1.0; neither L2 nor spectral normalisation):
        python eae.py --dataset mnist --latent-dim 16 --entropy-weight 0.05
    Batch norm only, no entropy term (Sec. 5.2 ablation): --entropy-weight 0 (the data set's
    L2 or spectral norm stays; add --l2-weight 0 --spectral-norm none for batch norm alone)

Deviations and choices (the extracted paper lost most of its numbers; no code is public):
  - Architecture, data and batch size (100) follow Ghosh et al.'s RAE, which the paper
    says it matches exactly: the common backbone with f = 128, 4x4 kernels (5x5 for
    CelebA), sigmoid output; see dae.py for the backbone's Keras-derived details.
  - Reconstruction: squared error summed over pixels, averaged over the batch (the form
    the loss takes in the paper's Eq. (2) as recovered in our notes); lambda multiplies
    an entropy in nats. lambda = 0.05 is the smaller of the paper's two MNIST values; for
    CIFAR-10 and CelebA the paper's values are lost and 0.05 is our choice.
  - The log holds the entropy estimate and its gap to the entropy of N(0, I). The estimator
    is biased upwards in high dimension with a batch of 100 (d = 128: about +27 nats on
    N(0, I) samples), so the gap, which would be KL(q || N(0, I)), goes negative; compare
    it between runs rather than with zero.
  - k = 1 (the paper's appendix: more neighbours help only slightly). Distances enter as
    0.5 * log(squared distance + 1e-12): no square root at zero distance, so duplicated
    codes give finite gradients. Squared distances are summed from the differences in
    fp32, not from the Gram expansion, which at d = 128 made a near-duplicate pair's
    entropy estimate ~240 nats too low in a test batch of 75.
  - The decoder's regulariser per data set, as the paper: L2 for CIFAR-10, spectral
    normalisation (every layer) for CelebA, none for MNIST and the other data sets.
    L2: lambda_L2 * sum of the squared kernels of the decoder's transposed convs (not its
    first Linear, no biases), as RAE-L2 penalises the CIFAR-10 decoder; our 3e-3 is the
    RAE-L2 CIFAR coefficient 1e-6 converted to a per-image summed loss (x 3072 pixels).
  - Adam, lr 5e-4 (Ghosh et al.'s CIFAR-10 value; 1e-3 for CelebA as theirs), multiplied by
    --lr-decay = 0.97 after every epoch: the paper uses an exponential decay whose rate was
    lost in extraction. 100 epochs (Ghosh et al.'s CIFAR-10 budget; 70 for CelebA).
  - The last epoch's model is kept and evaluated; the paper compares "the best checkpoint"
    of each model (Sec. 5.2, by FID it seems, which it computes during training). Not
    measured: picking by FID needs Inception passes every epoch.
  - The GMM and MVG samplers are the same as dae.py's (common.fit_samplers).
  - Under torchrun (README, "Several GPUs") the latent batch norm and the entropy estimate
    both work on one process's B/N codes: nearest neighbours are searched within a
    process's batch, so the estimator sees batches of B/N (more biased when small), and
    --k must be below B/N. --sync-bn (CUDA) gives the BN moments over all B codes; the
    entropy stays per process. Keep B/N near the paper's 100 (e.g. --batch-size 400 on
    4 GPUs) and the learning rate of that batch.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

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
    latent_dim: int = arg(128, "latent units: 128 CIFAR-10, 64 CelebA, 16 MNIST", low=1)
    entropy_weight: float = arg(0.05, "lambda of Eq. (2), the entropy term's weight (0: BN "
                                "only)", low=0)
    k: int = arg(1, "neighbour of the Kozachenko-Leonenko estimator", low=1)
    l2_weight: float = arg(-1.0, "weight of the L2 penalty on the decoder's transposed convs; "
                           "-1: 3e-3 for cifar10, 0 otherwise", low=-1)
    spectral_norm: str = arg("auto", "spectral normalisation; auto: all layers for celeba, "
                             "none otherwise", choices=("auto", "none", "decoder", "all"))
    epochs: int = arg(100, "training epochs", low=1)
    batch_size: int = arg(100, "batch size: the entropy is estimated over it", low=2)
    lr: float = arg(5e-4, "initial learning rate of Adam", low=0)
    lr_decay: float = arg(0.97, "learning rate multiplied by this after every epoch", low=0)
    gmm_components: int = arg(10, "components of the ex-post GMM", low=1)
    seed: int = arg(0, "seed of initialisation, batch order and samplers")
    device: str = arg("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    compile: bool = arg(False, "torch.compile the model (worth it on CUDA only)")
    sync_bn: bool = arg(False, "torchrun: batch-norm statistics over all processes (SyncBatchNorm)")
    out_dir: str = arg("runs", "parent folder of the run folders")
    resume: str = arg("", "run folder to continue from its last checkpoint")


# -- Model: the common backbone with a batch norm without affine on the code -------------
class EAE(nn.Module):
    def __init__(self, args: Args, channels: int, image_size: int):
        super().__init__()
        features = common.Encoder(channels, image_size, args.filters, args.depth)
        code = nn.Linear(features.out_features, args.latent_dim)
        batch_norm = nn.BatchNorm1d(args.latent_dim, affine=False)  # no scale, no shift
        common.keras_init(code, batch_norm)
        self.encoder = nn.Sequential(features, code, batch_norm)
        self.decoder = common.Decoder(channels, image_size, args.filters, args.depth,
                                      args.latent_dim)
        if args.spectral_norm in ("decoder", "all"):
            common.spectral_norm(self.decoder)
        if args.spectral_norm == "all":
            common.spectral_norm(features, code)

    def forward(self, x):  # x [B, C, H, W] in [0, 1]
        z = self.encoder(x)  # [B, d], batch-normed: mean 0, variance 1 per dimension
        return self.decoder(z), z  # logits [B, C, H, W], codes [B, d]


# -- Loss: reconstruction minus lambda times the entropy estimate ------------------------
def knn_entropy(z: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Kozachenko-Leonenko estimate, in nats, of the entropy of the distribution of the
    rows of z [N, d] (Sec. 3.2)."""
    n, d = z.shape
    z = z.float()
    # Differences taken directly in fp32: the Gram expansion |a|^2 + |b|^2 - 2 a.b loses the
    # small distances of near neighbours, exactly where the repulsion acts.
    dist2 = (z[:, None, :] - z[None, :, :]).square().sum(2)  # [N, N]
    dist2 = dist2 + torch.diag(torch.full((n,), math.inf, device=z.device))  # not itself
    kth_dist2 = dist2.topk(k, dim=1, largest=False).values[:, -1]  # [N]
    log_eps = 0.5 * torch.log(kth_dist2 + 1e-12)  # log eps_i,k with no sqrt at zero
    log_unit_ball = (d / 2) * math.log(math.pi) - math.lgamma(d / 2 + 1)  # log V_d
    digamma = lambda x: torch.special.digamma(torch.tensor(float(x))).item()  # noqa: E731
    return digamma(n) - digamma(k) + log_unit_ball + d * log_eps.mean()


def normal_entropy(d: int) -> float:
    """Entropy of N(0, I_d) in nats: the most a code with BN's moments can have."""
    return 0.5 * d * math.log(2 * math.pi * math.e)


def reconstruction_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Squared error summed over pixels, mean over the batch."""
    return (torch.sigmoid(logits.float()) - x).square().flatten(1).sum(1).mean()


def decoder_l2(model: EAE) -> torch.Tensor:
    """Sum of the squared kernels of the decoder's transposed convs (not its first Linear, no
    biases, no batch-norm scales), as RAE-L2 penalises the CIFAR-10 decoder."""
    return sum(m.weight.square().sum() for m in model.decoder.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))


def eae_loss(logits, x, z, decoder_penalty, args: Args) -> dict:
    """Eq. (2) plus the L2 penalty: reconstruction - lambda * H_hat(z) + lambda_L2 * L2.
    Maximising the entropy estimate spreads the batch's codes apart."""
    terms = {"reconstruction": reconstruction_loss(logits, x), "entropy": knn_entropy(z, args.k),
             "decoder_penalty": decoder_penalty}
    terms["loss"] = (terms["reconstruction"] - args.entropy_weight * terms["entropy"]  # Eq. (2)
                     + args.l2_weight * decoder_penalty)
    return terms


def learning_rate(args: Args, epoch: int) -> float:
    """Adam's rate in `epoch` (0-based): --lr times --lr-decay per epoch already done."""
    return args.lr * args.lr_decay ** epoch


# -- Training ----------------------------------------------------------------------------
def paper_regulariser(args: Args) -> Args:
    """-1 / auto resolved as the paper: L2 3e-3 for CIFAR-10, spectral norm for CelebA."""
    l2 = (3e-3 if args.dataset == "cifar10" else 0.0) if args.l2_weight < 0 else args.l2_weight
    sn = ("all" if args.dataset == "celeba" else "none") if args.spectral_norm == "auto" \
        else args.spectral_norm
    return dataclasses.replace(args, l2_weight=l2, spectral_norm=sn)


def train(args: Args, given: set):
    args, checkpoint, device, train_images, test_images = common.start(args, given, "eae")
    args = paper_regulariser(args)
    batch = common.local_batch(args.batch_size)  # this process's share (torchrun)
    if args.k >= batch:  # the estimate uses a process's own codes
        raise common.UserError(f"--k {args.k} needs batches of more than {args.k} codes; "
                               f"each process has {batch}")
    data_shape = tuple(train_images.shape[1:3])  # channels, image size (square images)
    model = EAE(args, *data_shape).to(device)
    model = model.to(memory_format=common.memory_format(device))  # channels_last on CUDA
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, eps=1e-7)
    folder, start_epoch = common.open_run("eae", args, checkpoint, model, optimizer)
    wrapped = common.parallel(model, args.compile, args.sync_bn)  # DDP (torchrun), compiled
    print(f"entropy of N(0, I) in {args.latent_dim} dimensions: "
          f"{normal_entropy(args.latent_dim):.2f} nats; L2 {args.l2_weight:g}, spectral norm "
          f"{args.spectral_norm}")

    state = checkpoint  # (a run resumed with no epoch left to train: its own)
    for epoch in range(start_epoch, args.epochs):
        lr = common.set_lr(optimizer, learning_rate(args, epoch))  # exponential decay (Appendix)
        model.train()
        steps = common.Epoch(folder, args.seed, epoch, args.batch_size, total=args.epochs)
        for x in steps.batches(train_images, args.flip):  # [B, C, H, W] in [0, 1]
            with common.autocast(device):
                logits, z = wrapped(x)
            penalty = decoder_l2(model) if args.l2_weight else torch.zeros((), device=device)
            terms = eae_loss(logits, x, z, penalty, args)  # Eq. (2) + L2
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            # With BN's moments fixed the gap is KL(q || N(0, I)), up to the estimator's bias.
            steps.add(**terms, entropy_gap=normal_entropy(args.latent_dim) - terms["entropy"])
        steps.end(lr=lr)  # the epoch's mean of each term, in log.jsonl
        common.save_test_reconstructions(model, test_images, folder)
        # Samples looking good early predict the final FID (Appendix): a grid every epoch.
        prior = common.Run(model, {}, {"normal": common.normal_sampler(args.latent_dim)}, folder)
        common.save_grid(sample(prior, 64, "normal", args.seed), folder / "samples_normal.png")
        state = common.save_epoch(folder, "eae", args, epoch, model, optimizer, data_shape)

    # N(0, I) needs no fitting; MVG and GMM are fitted on the training codes for comparison.
    codes = common.gather_rows(common.encode_all(model.eval().encoder, train_images))  # [N, d]
    samplers = common.fit_samplers(codes, args.seed, args.gmm_components)
    common.keep_samplers(state, samplers, model, test_images, folder, args.seed)  # checkpoint
    print(f"done: grids, log.jsonl and checkpoint in {folder}")
    return folder


# -- Sampling, and the functions eval.py calls -------------------------------------------
def load_run(run_dir: str, device: str = "cpu") -> common.Run:
    """A trained run: the model in eval mode on `device` and its fitted samplers."""
    return common.load_run(run_dir, device, lambda args, shape: EAE(Args(**args), *shape))


# Images from codes and codes from images: decode(sample(N(0, I) | MVG | GMM)) is how the
# method generates; the backbone methods share these (common.py).
encode, decode, sample = common.encode, common.decode, common.sample


def main(args: Args, given: set):
    train(args, given)


# -- The paper's figures, which eval.py prints beside ours -----------------------------
# The paper's Table 1 FIDs (test-set reference), which eval.py prints beside ours, keyed by
# PAPER_KEY (paper_settings: the rest of each row's setting).
PAPER_KEY = ("dataset",)
PAPER_FID = {("cifar10",): {"rec": 29.77, "normal": 85.26, "mvg": 80.07, "gmm": 73.12},
             ("celeba",): {"rec": 40.26, "normal": 44.63, "mvg": 42.92, "gmm": 39.76}}
# Each figure above: 10,000 samples, as the RAE code it compares with; eval.py prints it
# beside ours only for as many samples, against the whole test split.
PAPER_SAMPLES = 10_000


def paper_settings(key: tuple) -> dict:
    """Every setting of the paper's run that PAPER_FID[key] reports: Args' defaults (our
    reading of the paper, see Deviations) with the data set's latent units, regulariser,
    learning rate and epochs (CelebA: 64, spectral norm, 1e-3, 70)."""
    (dataset,) = key
    settings = {**dataclasses.asdict(Args()), "dataset": dataset, "latent_dim": 128,
                "l2_weight": 3e-3, "spectral_norm": "none"}
    if key == ("celeba",):
        settings.update(latent_dim=64, l2_weight=0.0, spectral_norm="all", lr=1e-3, epochs=70)
    return settings


def paper_fid(args: dict, ref: str = "test") -> dict:
    """The paper's Table 1 FIDs for this run's data set: only for its setting there
    (common.paper_row)."""
    return common.paper_row(args, ref, PAPER_FID, PAPER_KEY, paper_settings)


if __name__ == "__main__":
    common.cli(main, Args, __doc__)
