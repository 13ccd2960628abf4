"""What the method files share, in three parts (each under its banner, in this order):

  1. What the methods share: data as uint8 NCHW tensors and their batches, the backbone of
     Tolstikhin et al. 2018 / Ghosh et al. 2020, the ex-post samplers (N(0, I), MVG, GMM),
     the schedules, and generation (encode, sample, decode). It names nothing from parts 2
     and 3, so that it can be copied alone with a method file.
  2. Running a method: options, device, run folder, log, grids, checkpoints, resume,
     several processes under torchrun (DistributedDataParallel). A single-process copy of a
     method can delete these calls (README, "Copying a method into your own code").
  3. Evaluation, for eval.py: the papers' figures, Inception features, FID, KID, IS,
     precision / recall.

Images that cross a file boundary are float NCHW tensors in [0, 1].
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import typing
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


# === 1. What the methods share: data, backbone, ex-post samplers, schedules, generation ===
class UserError(Exception):
    """A mistake the user can fix (bad data path, missing checkpoint): printed as one line."""

    exit_code = 2


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:120]


def missing_weights(what: str, url: str, error: Exception) -> UserError:
    """The error for pretrained weights that are not in torch's cache and cannot be
    downloaded: which file, where it belongs, where it comes from."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return UserError(f"{what} {Path(url).name} are not in {folder} and could not be "
                     f"downloaded ({_first_line(error)}); put the file there (from {url})")


# bf16 autocast and channels_last: None, on CUDA only (the default); True or False, on or off
# on any device (the tests rehearse the CUDA path on the CPU with True).
FAST = None


def fast(device: torch.device) -> bool:
    return device.type == "cuda" if FAST is None else FAST


def autocast(device: torch.device):
    """bf16 autocast where fast(device); nothing otherwise."""
    if fast(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last where fast(device), for models and batches; contiguous otherwise."""
    return torch.channels_last if fast(device) else torch.contiguous_format


DATASETS = ("cifar10", "mnist", "celeba", "folder", "digits")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
# Image size and centre crop a data set gets when --image-size / --crop are 0.
DEFAULT_SIZE = {"celeba": 64}
DEFAULT_CROP = {"celeba": 140}
# The standard partition by file number: 1-162770 train, 162771-182637 valid, the rest test.
CELEBA_VALID_FROM, CELEBA_TEST_FROM = 162771, 182638


def load_images(name: str, root: str, split: str, image_size: int = 0, crop: int = 0):
    """A whole split as one uint8 tensor [N, C, H, W] on the CPU."""
    image_size, crop = image_size or DEFAULT_SIZE.get(name, 32), crop or DEFAULT_CROP.get(name, 0)
    if split not in ("train", "test") and (name, split) != ("celeba", "valid"):
        raise ValueError(f"split must be train or test (or CelebA's valid), not {split}")
    if name in ("cifar10", "mnist") and image_size != 32:
        raise UserError(f"{name} images are 32x32 here; --image-size must be 32 (or 0)")
    if crop and name not in ("celeba", "folder"):
        raise UserError(f"--crop applies to celeba and folder images; {name} images are "
                        f"not cropped (leave it at 0)")
    if name == "cifar10":
        return _torchvision_set("CIFAR10", root, split, "cifar-10-batches-py")
    if name == "mnist":  # 28x28 zero-padded to 32x32, as Ghosh et al. and Ghose et al.
        return F.pad(_torchvision_set("MNIST", root, split, "MNIST/raw"), (2, 2, 2, 2))
    if name == "celeba":
        return _celeba(root, split, image_size, crop)
    if name == "folder":
        return _folder(root, split, image_size, crop)
    if name == "digits":
        return _digits(split, image_size)
    raise ValueError(f"unknown data set {name}; choose from {DATASETS}")


def _torchvision_set(cls_name: str, root: str, split: str, expected: str) -> torch.Tensor:
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    try:  # download=True only fetches when the files are missing or corrupt
        with contextlib.redirect_stdout(sys.stderr):
            dataset = cls(root, train=split == "train", download=True)
    except (OSError, RuntimeError) as error:  # no network, or a broken partial download
        raise UserError(
            f"{cls_name} is not in {Path(root) / expected} and could not be downloaded "
            f"({_first_line(error)}); put it there or pass --data-root") from None
    images = torch.as_tensor(dataset.data)  # [N, H, W, C] (CIFAR) or [N, H, W] (MNIST)
    return images.permute(0, 3, 1, 2).contiguous() if images.ndim == 4 else images[:, None]


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"data folder {folder} does not exist; pass --data-root")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"data folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _folder(root: str, split: str, image_size: int, crop: int) -> torch.Tensor:
    """ImageFolder-style tree. With train/ and test/ sub-folders those are the splits;
    otherwise every tenth file (sorted order) is held out as the test split."""
    root_path = Path(root)
    if (root_path / "train").is_dir() and (root_path / "test").is_dir():
        return _decode_cached(_image_files(root_path / split), root_path, f"folder-{split}",
                              image_size, crop)
    files = _image_files(root_path)
    files = [f for i, f in enumerate(files) if (i % 10 == 9) == (split == "test")]
    if not files:
        raise UserError(f"data folder {root} has too few images for a {split} split")
    return _decode_cached(files, root_path, f"folder-{split}", image_size, crop)


def _celeba(root: str, split: str, image_size: int, crop: int) -> torch.Tensor:
    """CelebA through torchvision (root/celeba/...) or any folder of its numbered JPEGs."""
    root_path = Path(root)
    image_dir = next((d for d in (root_path / "celeba" / "img_align_celeba",
                                  root_path / "img_align_celeba", root_path)
                      if d.is_dir() and any(d.glob("*.jpg"))), None)
    if image_dir is None:
        import torchvision

        try:  # torchvision knows the official files and partition
            torchvision.datasets.CelebA(root, split="all", download=True)
        except (OSError, RuntimeError) as error:
            raise UserError(
                f"CelebA is not in {root_path / 'celeba' / 'img_align_celeba'} and could not "
                f"be downloaded ({_first_line(error)}); put it there or pass --data-root"
            ) from None
        image_dir = root_path / "celeba" / "img_align_celeba"
    files = [p for p in _image_files(image_dir) if celeba_partition(p) == split]
    if not files:
        raise UserError(f"no CelebA {split} images (test starts at {CELEBA_TEST_FROM}.jpg) "
                        f"in {image_dir}")
    return _decode_cached(files, image_dir, f"celeba-{split}", image_size, crop)


def celeba_partition(path: Path) -> str:
    """The official partition by file number (train, valid, test); a file whose name is not
    a number counts as train."""
    number = int(path.stem) if path.stem.isdigit() else None
    return ("train" if number is None or number < CELEBA_VALID_FROM else
            "test" if number >= CELEBA_TEST_FROM else "valid")


def _decode_cached(files, cache_dir: Path, tag: str, image_size: int, crop: int):
    """Decode image files once; keep the result as one file next to the data."""
    from PIL import Image
    from tqdm import tqdm
    import torchvision.transforms.functional as TF

    cache = cache_dir / f".cache-{tag}-crop{crop}-size{image_size}.pt"
    stamp = [len(files), str(files[0]), str(files[-1]), max(f.stat().st_mtime for f in files)]
    if cache.exists():
        stored = torch.load(cache, weights_only=True)
        if stored["stamp"] == stamp:
            return stored["images"]
    images = torch.empty(len(files), 3, image_size, image_size, dtype=torch.uint8)
    unreadable = []
    for i, path in enumerate(tqdm(files, desc=f"decoding {tag}", mininterval=2)):
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (OSError, SyntaxError, ValueError):  # not an image, truncated, or corrupt
            unreadable.append(i)
            continue
        if crop:
            image = TF.center_crop(image, [crop, crop])
        image = TF.resize(image, image_size)  # shorter side (PIL always antialiases)
        image = TF.center_crop(image, [image_size, image_size])
        images[i] = TF.pil_to_tensor(image)
    if len(unreadable) == len(files):
        raise UserError(f"none of the {len(files)} image files under {cache_dir} could be "
                        f"read as an image (the first: {files[0]})")
    if unreadable:
        warnings.warn(f"skipped {len(unreadable)} of {len(files)} files that are not readable "
                      f"images (the first: {files[unreadable[0]]})")
        keep = torch.ones(len(files), dtype=torch.bool)
        keep[unreadable] = False
        images = images[keep]
    try:
        torch.save({"images": images, "stamp": stamp}, cache.with_name(cache.name + ".tmp"))
        os.replace(cache.with_name(cache.name + ".tmp"), cache)  # whole, or not at all
    except OSError:
        warnings.warn(f"could not write the cache {cache}; the next run decodes again")
    return images


def _digits(split: str, image_size: int) -> torch.Tensor:
    """scikit-learn's bundled 8x8 digits (1797), upscaled; the last 297 are the test split."""
    from sklearn.datasets import load_digits

    pixels = torch.as_tensor(load_digits().images, dtype=torch.float32)[:, None] / 16
    pixels = pixels[:1500] if split == "train" else pixels[1500:]
    # bilinear weights are non-negative and sum to one, so the result stays in [0, 1]
    pixels = F.interpolate(pixels, size=image_size, mode="bilinear", align_corners=False)
    return (pixels * 255).round().to(torch.uint8)  # [N, 1, S, S]


def epoch_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """The CPU generator of one epoch's batch order and augmentation, from (seed, epoch,
    rank): a resumed run redraws the same, each torchrun process its own."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + rank * 7_919_000_001)


def batches(images: torch.Tensor, batch_size: int, seed: int, epoch: int, flip: bool = False,
            rank: int = 0):
    """One epoch of float [0, 1] batches sliced from a seeded permutation of uint8 `images`
    (already on the training device); drops the last incomplete batch. The permutation and
    the flips depend only on (seed, epoch, rank), so a resumed run sees the same batches."""
    g = epoch_generator(seed, epoch, rank)
    order = torch.randperm(len(images), generator=g).to(images.device)
    flips = (torch.rand(len(images), generator=g) < 0.5).to(images.device)
    layout = memory_format(images.device)
    for start in range(0, len(images) - batch_size + 1, batch_size):
        index = order[start:start + batch_size]
        x = images[index].float().div_(255).contiguous(memory_format=layout)
        if flip:  # horizontal flip of a random half of the batch, on the device
            x = torch.where(flips[index, None, None, None], x.flip(3), x)
        yield x  # [B, C, H, W]


def _per_stage(depth, stages: int) -> list[int]:
    depth = [depth] if isinstance(depth, int) else list(depth)
    if len(depth) == 1:
        depth = depth * stages
    if len(depth) != stages or min(depth) < 1:
        raise UserError(f"--depth takes one value or {stages} values of at least 1, not {depth}")
    return depth


def keras_init(*modules: nn.Module):
    """Keras' defaults: Glorot-uniform weights and zero biases for convs and dense layers,
    batch-norm momentum 0.99 (PyTorch's 0.01) and eps 1e-3."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum, m.eps = 0.01, 1e-3


def spectral_norm(*modules: nn.Module):
    """Spectral normalisation (one power iteration per training step) of every conv, transposed
    conv and dense layer, of the matrix Keras' ConvSN2D / ConvSN2DTranspose / DenseSN
    normalise: [out, in k k] for a conv and [in, out k k] (Keras' [k k out, in]) for a
    transposed conv, i.e. dim 0 of the PyTorch weight in both cases."""
    for module in modules:
        for m in list(module.modules()):
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.utils.parametrizations.spectral_norm(m, dim=0)


def tf_same_padding(kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding (before, after) of a conv whose input side is a multiple
    of its stride: kernel - stride in all, the odd one after."""
    total = max(kernel - stride, 0)
    return total // 2, total - total // 2


class SameConv(nn.Sequential):
    """Conv2d with TensorFlow 'same' padding: output side = input side / stride."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1):
        before, after = tf_same_padding(kernel, stride)
        super().__init__(nn.ZeroPad2d((before, after, before, after)),
                         nn.Conv2d(in_ch, out_ch, kernel, stride))


class SameConvTranspose(nn.ConvTranspose2d):
    """ConvTranspose2d with TensorFlow 'same' padding: output side = stride x input side,
    the full output cropped by the (before, after) padding of the matching SameConv."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1):
        super().__init__(in_ch, out_ch, kernel, stride, padding=tf_same_padding(kernel, stride)[0])

    def forward(self, x):
        side = x.shape[-1] * self.stride[0]
        return super().forward(x)[..., :side, :side]  # PyTorch cropped `before` at both ends


def _stage(conv, in_ch: int, out_ch: int, kernel: int, depth: int) -> list:
    """depth-1 stride-1 convs, then the stride-2 (transposed) conv; each with BN + ReLU."""
    layers = []
    for _ in range(depth - 1):
        layers += [SameConv(in_ch, out_ch, kernel), nn.BatchNorm2d(out_ch), nn.ReLU()]
        in_ch = out_ch
    return layers + [conv(in_ch, out_ch, kernel, 2), nn.BatchNorm2d(out_ch), nn.ReLU()]


def kernel_size(image_size: int) -> int:
    return 4 if image_size <= 32 else 5  # 4x4 for 32x32, 5x5 for 64x64


class Encoder(nn.Module):
    """x [B, C, S, S] in [0, 1] -> features [B, 8f (S/16)^2]: four stride-2 stages of f, 2f,
    4f, 8f filters. The method puts its latent layer (Linear to the code) after it."""

    def __init__(self, channels: int, image_size: int, filters: int, depth):
        super().__init__()
        if image_size % 16 or image_size < 16:
            raise UserError(f"image size must be a multiple of 16, not {image_size}")
        layers, in_ch = [], channels
        for stage, stage_depth in enumerate(_per_stage(depth, 4)):
            layers += _stage(SameConv, in_ch, filters * 2 ** stage, kernel_size(image_size),
                             stage_depth)
            in_ch = filters * 2 ** stage
        self.convs = nn.Sequential(*layers, nn.Flatten())
        self.out_features = in_ch * (image_size // 16) ** 2
        keras_init(self)

    def forward(self, x):
        return self.convs(x * 2 - 1)  # [B, 8f (S/16)^2]; inputs to [-1, 1], official code


class Decoder(nn.Module):
    """z [B, latent] -> logits [B, C, S, S]. Linear to 8x8x8f, stride-2 transposed convs
    4f, 2f (and f for 64x64), then a stride-1 transposed conv to C channels, no BN."""

    def __init__(self, channels: int, image_size: int, filters: int, depth, latent_dim: int):
        super().__init__()
        kernel = kernel_size(image_size)
        ups = {16: 1, 32: 2, 64: 3}.get(image_size)  # stride-2 stages up from 8x8
        if ups is None:
            raise UserError(f"image size {image_size}: the decoder is built for 16, 32 or 64")
        # Stage widths 4f, 2f, f mirror encoder stages 3, 2, 1, and take their depths.
        depths = _per_stage(depth, 4)[2::-1][:ups]
        self.width = filters * 8
        self.from_latent = nn.Linear(latent_dim, 8 * 8 * self.width)
        layers, in_ch = [], self.width
        for stage in range(ups):
            out_ch = filters * 2 ** (2 - stage)
            layers += _stage(SameConvTranspose, in_ch, out_ch, kernel, depths[stage])
            in_ch = out_ch
        layers.append(SameConvTranspose(in_ch, channels, kernel))  # output layer
        self.convs = nn.Sequential(*layers)
        keras_init(self)

    def forward(self, z):
        h = self.from_latent(z).view(-1, self.width, 8, 8)  # [B, 8f, 8, 8]
        return self.convs(h)  # [B, C, S, S] logits


class LatentSampler:
    """A Gaussian mixture over codes, sum_k w_k N(mu_k, Sigma_k) in float64. The three ex-post
    densities are its cases: N(0, I) and MVG have one component, GMM has K."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor):
        self.weights, self.means, self.covs = weights.double(), means.double(), covs.double()
        # Sigma_k = A_k A_k^T from the eigendecomposition: fine for singular covariances.
        eigvals, eigvecs = torch.linalg.eigh(self.covs)
        self.factors = eigvecs * eigvals.clamp(min=0).sqrt()[:, None, :]  # [K, d, d]

    def sample(self, n: int, seed: int, device="cpu") -> torch.Tensor:
        """n codes [n, d] (float32, drawn on the CPU, returned on `device`); components are
        drawn per sample, so never grouped."""
        g = torch.Generator().manual_seed(seed)
        component = torch.multinomial(self.weights, n, replacement=True, generator=g)
        noise = torch.randn(n, self.means.shape[1], generator=g, dtype=torch.float64)
        z = self.means[component] + torch.einsum("nij,nj->ni", self.factors[component], noise)
        return z.float().to(device)

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        """log density (nats) of each code [N, d] -> [N], float64; 1e-6 is added to the
        covariance diagonals, so that a singular covariance (degenerate codes) has one."""
        covs = self.covs + 1e-6 * torch.eye(self.covs.shape[-1], dtype=torch.float64)
        components = torch.distributions.MultivariateNormal(self.means, covs)  # batch [K]
        per_component = components.log_prob(codes.detach().cpu().double()[:, None])  # [N, K]
        return torch.logsumexp(per_component + self.weights.log(), dim=1)

    def state_dict(self) -> dict:
        return {"weights": self.weights, "means": self.means, "covs": self.covs}


def normal_sampler(d: int) -> LatentSampler:
    """The isotropic prior N(0, I_d)."""
    return LatentSampler(torch.ones(1), torch.zeros(1, d), torch.eye(d)[None])


def fit_samplers(codes: torch.Tensor, seed: int, gmm_components: int) -> dict:
    """N(0, I), MVG (mean and full covariance of the codes) and a GMM (scikit-learn, full
    covariances, max_iter 2000, tol 1e-3 as the RAE code), fitted on codes [N, d]."""
    from sklearn.mixture import GaussianMixture

    codes = codes.detach().cpu().double()
    d, one = codes.shape[1], torch.ones(1)
    gmm = GaussianMixture(gmm_components, covariance_type="full", max_iter=2000, tol=1e-3,
                          random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-convergence is reported below, in one line
        gmm.fit(codes.numpy())
    if not gmm.converged_:
        warnings.warn(f"the {gmm_components}-component GMM did not converge in "
                      f"{gmm.n_iter_} iterations; its samples may be poor")
    return {
        "normal": normal_sampler(d),
        "mvg": LatentSampler(one, codes.mean(0, keepdim=True), torch.cov(codes.T)[None]),
        "gmm": LatentSampler(*(torch.as_tensor(a) for a in
                               (gmm.weights_, gmm.means_, gmm.covariances_))),
    }


def samplers_from_state(states: dict) -> dict:
    """The Gaussian-mixture samplers stored in a checkpoint; a sampler another method file
    defines (iae_lde.py's LDE, which --fit-lde adds to any run) stays its stored state, for
    that file's sampler_from_state (named in the state) to rebuild."""
    return {name: state if "module" in state else LatentSampler(**state)
            for name, state in states.items()}


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Every parameter group's learning rate set to lr, which is returned (for the log)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def daly_learning_rate(epoch: int, epochs: int, lr: float, warmup_lr: float) -> float:
    """Daly et al.'s schedule (DAE and its VAE baseline): one warm-up epoch at warmup_lr,
    then lr, x0.1 from epoch int(0.33 E) and again from int(0.66 E)."""
    if epoch == 0:
        return warmup_lr
    return lr * 0.1 ** ((epoch >= int(0.33 * epochs)) + (epoch >= int(0.66 * epochs)))


class Run(typing.NamedTuple):
    """A trained model and its samplers, as a method file's load_run returns it to eval.py;
    `images`: its codes -> images in [0, 1], where that is not the sigmoid of its decoder."""

    model: nn.Module
    args: dict
    samplers: dict
    folder: Path
    images: typing.Callable | None = None


@torch.no_grad()
def encode_all(encode, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Codes [N, d] (float32, CPU) of a whole uint8 image set, in batches, computed in fp32
    (no autocast), as eval.py encodes."""
    return torch.cat([encode(images[start:start + batch_size].float().div_(255)).float().cpu()
                      for start in range(0, len(images), batch_size)])


@torch.no_grad()
def encode(run: Run, images: torch.Tensor) -> torch.Tensor:
    """Images [B, C, H, W] in [0, 1] -> codes [B, d]."""
    return run.model.encoder(images)


@torch.no_grad()
def decode(run: Run, codes: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Codes [B, d] -> images [B, C, H, W] in [0, 1], in batches."""
    images = run.images or (lambda z: torch.sigmoid(run.model.decoder(z)))
    return torch.cat([images(z).float() for z in codes.split(batch_size)])


def sample(run: Run, n: int, sampler: str = "gmm", seed: int = 0) -> torch.Tensor:
    """n new images [n, C, H, W] in [0, 1]: codes drawn from a latent sampler, decoded."""
    if sampler not in run.samplers:
        raise UserError(f"{run.folder} has no '{sampler}' sampler (it has "
                        f"{sorted(run.samplers) or 'none: finish training first'})")
    device = next(run.model.parameters()).device
    return decode(run, run.samplers[sampler].sample(n, seed, device))


# === 2. Running a method: options, device, run folder, log, grids, checkpoints, torchrun ===
def arg(default, help: str, choices=None, low=None, positional=False):
    """A dataclass field that becomes `--flag` (or an optional positional argument) with
    this one-line help (and allowed values)."""
    meta = {"help": help, "choices": choices, "low": low, "positional": positional}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _bounded(kind, low):
    def convert(text):
        value = kind(text)  # argparse turns a ValueError into "invalid int value: 'x'"
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value

    convert.__name__ = kind.__name__
    return convert


class _HelpFormat(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with each default, and the text after the options as written."""


def build_parser(args_cls, description: str | None = None,
                 epilog: str | None = None) -> argparse.ArgumentParser:
    """One `--flag` per field of the `Args` dataclass: type, default, help, choices from it."""
    parser = argparse.ArgumentParser(description=description, epilog=epilog,
                                     formatter_class=_HelpFormat)
    hints = typing.get_type_hints(args_cls)
    for f in dataclasses.fields(args_cls):
        kind = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        meta = f.metadata
        options = {"default": default, "help": meta.get("help", "")}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction  # --flag / --no-flag
        else:
            item = typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind
            if meta.get("low") is not None:
                item = _bounded(item, meta["low"])
            options["type"] = item
            options["choices"] = meta.get("choices")
            if typing.get_origin(kind) is list:
                options["nargs"] = "+"
        if meta.get("positional"):  # optional: one value, or any number for a list
            options["nargs"] = "*" if typing.get_origin(kind) is list else "?"
            parser.add_argument(f.name, **options)
        else:
            parser.add_argument("--" + f.name.replace("_", "-"), **options)
    return parser


def parse_args(args_cls, argv=None, description=None, epilog=None):
    """Parse argv into `args_cls`; also return the names the user gave explicitly."""
    parser = build_parser(args_cls, description, epilog)
    namespace = parser.parse_args(argv)
    # A second pass with every default suppressed tells which flags were typed.
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given = set(vars(parser.parse_args(argv)))
    return args_cls(**vars(namespace)), given


def cli(main, args_cls, doc: str | None, epilog: str | None = None, trains: bool = True):
    """Entry point of a script: parse, run, and turn user mistakes into one line. --help
    shows the docstring's first paragraph, the options, then `epilog`. Ctrl-C says what
    is kept and how to go on (`trains`: a training script, whose checkpoints count)."""
    description = (doc or "").strip().split("\n\n")[0]
    args, given = parse_args(args_cls, description=description, epilog=epilog)
    try:
        main(args, given)
        end_processes()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        if LAST_SAVED:
            folder, what, again = LAST_SAVED
            print(f"\ninterrupted: {what} in {folder} is kept; continue with {again} {folder}",
                  file=sys.stderr)
        elif trains:
            print("\ninterrupted before the first checkpoint: nothing to resume",
                  file=sys.stderr)
        else:
            print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


def world() -> tuple[int, int]:
    """(rank of this process, number of processes); (0, 1) in a plain run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_processes(device_name: str) -> torch.device:
    """The training device; under torchrun (WORLD_SIZE > 1) also the process group: NCCL
    and GPU LOCAL_RANK on CUDA, gloo on the CPU. Only rank 0 prints."""
    device = pick_device(device_name)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or torch.distributed.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                         timeout=datetime.timedelta(hours=1))  # see end_processes
    if not is_main():
        sys.stdout = open(os.devnull, "w")  # one copy of every message: rank 0's
    return device


def end_processes() -> int:
    """Under torchrun, leave the process group together: each process waits for the last
    (rank 0 fits the samplers alone), since one that exits first can abort the others.
    Returns this process's rank (0 in a plain run)."""
    rank = world()[0]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return rank


def local_batch(batch_size: int) -> int:
    """This process's share of the global --batch-size."""
    return batch_size // world()[1]


def shard(rows: torch.Tensor) -> torch.Tensor:
    """This process's rows: every N-th from its rank on, of the first len - len mod N, so
    that all processes hold as many (and take as many steps)."""
    rank, size = world()
    return rows[:len(rows) // size * size][rank::size]


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """The inverse of shard: all processes' rows, back in data-set order (the rows
    themselves in a plain run). Every process must call it."""
    rank, size = world()
    if size == 1:
        return rows
    nccl = torch.distributed.get_backend() == "nccl"
    local = rows.to(torch.device("cuda", torch.cuda.current_device())) if nccl else rows
    parts = [torch.empty_like(local) for _ in range(size)]
    torch.distributed.all_gather(parts, local.contiguous())
    return torch.stack(parts, 1).flatten(0, 1).to(rows.device)  # [size * n, ...]


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """A tensor averaged over the processes (for the log and for schedules that must agree)."""
    size = world()[1]
    if size > 1:
        value = value.detach().clone()
        torch.distributed.all_reduce(value)
        value /= size
    return value


def broadcast(obj):
    """Rank 0's value of a picklable object, on every process."""
    if world()[1] > 1:
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        obj = box[0]
    return obj


def parallel(model: nn.Module, compile: bool = False, sync_bn: bool = False) -> nn.Module:
    """What the training loop calls: under torchrun the model in DDP (batch norms over all
    processes' batches with sync_bn), compiled with compile; the model itself in a plain
    run. Parameters stay shared with `model`: optimizer and checkpoints use it unchanged."""
    if world()[1] > 1:
        device = next(model.parameters()).device
        if sync_bn:  # (start() has checked that this is CUDA)
            nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place below the top module
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None)
    return torch.compile(model) if compile else model


def progress(iterable, **kwargs):
    """A progress bar (tqdm) on rank 0; the bare iterable elsewhere."""
    from tqdm import tqdm

    return tqdm(iterable, leave=False, disable=not is_main(), **kwargs)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but CUDA is not available; "
                        "use --device cpu")
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return device


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def new_run_folder(out_dir: str, method: str, dataset: str, args, device=None) -> Path:
    """runs/<method>-<dataset>-<time>/ with args.json written: the settings and their
    provenance (commit, versions, device)."""
    name = f"{method}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder, suffix = Path(out_dir) / name, 1
    while folder.exists():  # two runs started in the same second
        folder, suffix = Path(out_dir) / f"{name}-{suffix}", suffix + 1
    folder.mkdir(parents=True)
    write_args(folder, args, device)
    return folder


def write_args(folder: Path, args, device=None):
    """args.json: every setting of the run and its provenance (rewritten when resumed)."""
    record = {**dataclasses.asdict(args), "provenance": provenance(device)}
    tmp = folder / ".args.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, folder / "args.json")


def provenance(device=None) -> dict:
    """Where a figure comes from: this project's git commit ("unknown" outside a checkout;
    "+changes" when files differ from it), the packages' versions and the device."""
    from importlib import metadata

    def git(*argv):
        try:
            out = subprocess.run(["git", *argv], cwd=Path(__file__).parent, capture_output=True,
                                 text=True, timeout=10)
            return out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            return None

    commit = git("rev-parse", "HEAD") or "unknown"
    if commit != "unknown" and git("status", "--porcelain", "--untracked-files=no"):
        commit += "+changes"
    versions = {}
    for package in ("torch", "torchvision", "lpips", "pytorch-fid"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo")
        models = [line.split(":", 1)[1].strip() for line in
                  (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
                  if line.startswith("model name")]
        name = f"{device.type}: {models[0] if models else platform.machine()}"
    return {"git_commit": commit, "versions": versions, "device": name,
            "python": platform.python_version()}


def log_epoch(folder: Path, record: dict):
    """Append one line of per-epoch figures to log.jsonl and print it (rank 0 only)."""
    if not is_main():
        return
    with open(folder / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in record.items()))


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8):
    """Images in [0, 1], [N, C, H, W], as one PNG grid (rank 0 only)."""
    import torchvision.utils

    if not is_main():
        return

    torchvision.utils.save_image(images.detach().float().cpu().clamp(0, 1), path, nrow=nrow,
                                 padding=1, pad_value=1.0)


def save_reconstructions(images: torch.Tensor, reconstructions: torch.Tensor, path: Path):
    """Rows of 8 originals, each followed by the row of their reconstructions."""
    n = len(images) // 8 * 8
    pairs = torch.stack([images[:n].view(-1, 8, *images.shape[1:]),
                         reconstructions[:n].view(-1, 8, *images.shape[1:])], 1)
    save_grid(pairs.flatten(0, 2), path, nrow=8)


@torch.no_grad()
def save_test_reconstructions(model: nn.Module, test_images: torch.Tensor, folder: Path,
                              images=None):
    """reconstructions.png: test images and their reconstructions (eval mode), the sigmoid of
    D(E(x)) or images(E(x))."""
    model.eval()
    x = test_images.float() / 255
    codes = model.encoder(x)
    decoded = images(codes) if images else torch.sigmoid(model.decoder(codes))
    save_reconstructions(x, decoded, folder / "reconstructions.png")


@torch.no_grad()
def save_interpolations(run: Run, images: torch.Tensor, path: Path, steps: int = 8):
    """Rows of: test image a, decodings of (1 - t) E(a) + t E(b) for `steps` values of t
    from 0 to 1, test image b; pairs (0, 1), (2, 3), ... of `images` [N, C, H, W] in [0, 1]."""
    pairs = min(8, len(images) // 2)
    a, b = images[0:2 * pairs:2], images[1:2 * pairs:2]  # [P, C, H, W] each
    t = torch.linspace(0, 1, steps, device=images.device)[None, :, None]  # [1, steps, 1]
    codes = encode(run, a)[:, None] * (1 - t) + encode(run, b)[:, None] * t  # [P, steps, d]
    decoded = decode(run, codes.flatten(0, 1)).view(len(a), steps, *images.shape[1:])
    rows = torch.cat([a[:, None], decoded.to(images.device), b[:, None]], 1)
    save_grid(rows.flatten(0, 1), path, nrow=steps + 2)


def save_sample_grids(run: Run, seed: int):
    """samples_<sampler>.png: 64 decoded samples of each sampler of the run."""
    for name in run.samplers:
        save_grid(sample(run, 64, name, seed), run.folder / f"samples_{name}.png")


def atomic_save(obj, path: Path):
    """torch.save to a temporary file, then rename: a crash never leaves a half file.
    Rank 0 only: under torchrun the other processes hold the same weights."""
    if not is_main():
        return
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


CHECKPOINT = "checkpoint.pt"
# (folder, what it holds, the flag that continues it) of this process's run, for Ctrl-C.
LAST_SAVED = []
# Options renamed since runs were written with them: {method: {stored name: today's}}.
RENAMED = {"eae": {"reg_weight": "entropy_weight", "l2": "l2_weight"},
           "iae_lde": {"components": "lde_components"}}


def load_checkpoint(run_dir: str, map_location="cpu", method: str = "") -> dict:
    """The run's checkpoint, loaded safely (tensors and plain types only); with `method`,
    an error unless that method wrote it."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise UserError(f"{run_dir} has no {CHECKPOINT}; pass the folder of a run "
                        "that finished at least one epoch")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated or foreign file
        raise UserError(f"{path} could not be read ({type(error).__name__})") from None
    if method and checkpoint.get("method") != method:
        raise UserError(f"{run_dir} is a {checkpoint.get('method')} run, not a {method} run")
    renamed = RENAMED.get(checkpoint.get("method"), {})
    old = sorted(set(checkpoint.get("args", {})) & set(renamed))
    if old:
        raise UserError(f"{run_dir} was written with {flags(old)}, since renamed "
                        f"{flags(renamed[k] for k in old)}; this version does not read it")
    return checkpoint


def flags(names) -> str:
    """Field names as the user types them: --latent-dim, --epochs."""
    return ", ".join("--" + name.replace("_", "-") for name in names)


RESUMABLE = ("epochs", "device", "compile")  # flags that may change when resuming
# Settings that do not change what a run learns (or only its random draws).
NOT_A_SETTING = ("data_root", "seed", "device", "compile", "sync_bn", "out_dir", "resume")


def resume(args, given: set, method: str = "", resumable=()):
    """For --resume RUN_DIR: the run's own args (epochs, device, compile and the method's
    `resumable` flags typed now win) and its checkpoint (an error if another method wrote it)."""
    checkpoint = load_checkpoint(args.resume, method=method)
    resumable = set(RESUMABLE) | set(resumable)
    ignored = sorted(given - resumable - {"resume"})
    if ignored:
        print(f"resuming: ignoring {flags(ignored)}; the run keeps its own settings")
    stored = {**checkpoint["args"], **{k: getattr(args, k) for k in given & resumable}}
    if stored.get("schedule_epochs") == 0 and stored["epochs"] != checkpoint["args"]["epochs"]:
        stored["schedule_epochs"] = checkpoint["args"]["epochs"]  # the run's own schedule
    if stored.get("schedule_epochs"):
        print(f"resuming: training to epoch {stored['epochs']} on the schedule of the run's "
              f"{stored['schedule_epochs']} epochs")
    unknown = sorted(set(stored) - {f.name for f in dataclasses.fields(args)})
    if unknown:
        raise UserError(f"{args.resume} stores the settings {flags(unknown)}, which this "
                        f"version does not know; it cannot be resumed")
    return type(args)(**{**stored, "resume": args.resume}), checkpoint


def start(args, given: set, method: str = "", resumable=(), keep=None):
    """The opening of every training run: --resume, device (and processes), seed, data on
    the device. Returns (args, checkpoint or None, device, training images (this process's
    shard under torchrun), 64 test images), images as uint8 [N, C, H, W]; keep(args,
    images): the training images the method trains on (iae_lde.py holds some out)."""
    checkpoint = None
    if args.resume:
        args, checkpoint = resume(args, given, method, resumable)
    device = init_processes(args.device)
    rank, size = world()
    if args.batch_size % size:
        raise UserError(f"--batch-size {args.batch_size} (the global batch) must be a "
                        f"multiple of the {size} processes")
    if size > 1 and getattr(args, "sync_bn", False) and device.type != "cuda":
        raise UserError("--sync-bn needs CUDA (torch's SyncBatchNorm runs on GPUs only); "
                        "leave it off on the CPU")
    torch.manual_seed(args.seed + rank)  # CPU and CUDA; DDP starts all from rank 0's weights
    train_images, test_images = run_images(args, "train"), run_images(args, "test")[:64]
    test_images = test_images.to(device)
    if keep is not None:
        train_images = keep(args, train_images)
    if args.batch_size > len(train_images):
        raise UserError(f"--batch-size {args.batch_size} is larger than the "
                        f"{len(train_images)} training images")
    return args, checkpoint, device, shard(train_images).to(device), test_images


def run_images(settings, split: str, data_root: str = "") -> torch.Tensor:
    """A split of a run's data set as the run sees it: its --dataset, --image-size and
    --crop, from `data_root` or its own --data-root (uint8 [N, C, H, W] on the CPU)."""
    s = settings if isinstance(settings, dict) else dataclasses.asdict(settings)
    return load_images(s["dataset"], data_root or s["data_root"], split, s["image_size"],
                       s["crop"])


def run_splits(method, run_args: dict, data_root: str = ""):
    """(the images a run trained on, those it held out: none, or its method's data_splits,
    rae.py's validation images, iae_lde.py's --holdout), uint8."""
    if hasattr(method, "data_splits"):
        return method.data_splits(run_args, data_root or run_args["data_root"])
    images = run_images(run_args, "train", data_root)
    return images, images[:0]


def open_run(method: str, args, checkpoint, model: nn.Module, optimizer) -> tuple[Path, int]:
    """A new run folder, or the resumed run's folder with its model, optimizer and RNG
    state restored. Returns (folder, first epoch to train)."""
    if checkpoint is None:
        device = next(model.parameters()).device
        folder = (new_run_folder(args.out_dir, method, args.dataset, args, device)
                  if is_main() else None)
        folder, start_epoch = broadcast(folder), 0
    else:
        folder, start_epoch = Path(args.resume), checkpoint["epoch"] + 1
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        per_process = checkpoint.get("rng_per_process", [])  # written under torchrun
        rank, size = world()
        set_rng_state(per_process[rank] if len(per_process) == size else checkpoint["rng"])
        if is_main():  # the settings typed now are the run's from here on
            write_args(folder, args, next(model.parameters()).device)
            if checkpoint["args"] != dataclasses.asdict(args):
                checkpoint["args"] = dataclasses.asdict(args)
                atomic_save(checkpoint, folder / CHECKPOINT)
            keep_log_until(folder, checkpoint["epoch"] + 1)
        LAST_SAVED[:] = [folder, f"the checkpoint of epoch {start_epoch}", "--resume"]
    print(f"run folder {folder}; {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
          f"parameters; {next(model.parameters()).device}")
    return folder, start_epoch


def stop_if_diverged(loss: float, epoch: int, folder: Path):
    if not math.isfinite(loss):
        raise UserError(f"the loss became {loss} in epoch {epoch + 1}; the checkpoint of the "
                        f"last good epoch in {folder} is intact; try a lower --lr")


class Epoch:
    """The plumbing every training loop repeats, for one epoch: its batches (this process's,
    with a progress bar), the running sums of the terms logged, a divergence check every 50
    steps, and at the end the terms' means over the steps and the processes (checked) in a
    log line with the learning rate and the speed."""

    def __init__(self, folder: Path, seed: int, epoch: int, batch_size: int, total: int = 0,
                 label: str = "epoch"):  # total, label: the progress line's "epoch 2/100"
        self.folder, self.seed, self.epoch = folder, seed, epoch
        self.batch, self.images = local_batch(batch_size), batch_size  # this process's, all
        self.desc, self.sums, self.steps = f"{label} {epoch + 1}/{total}", {}, 0
        self.started, self.bar, self.total = time.time(), None, 0

    def batches(self, images: torch.Tensor, flip: bool = False):
        """The epoch's float batches [B, C, H, W] of uint8 images (common.batches)."""
        self.total = len(images) // self.batch  # steps in the epoch
        self.bar = progress(batches(images, self.batch, self.seed, self.epoch, flip, world()[0]),
                            total=self.total, desc=self.desc)
        return self.bar

    def orders(self, n: int, device) -> torch.Tensor:
        """The epoch's batches of indices [B] of a seeded permutation of n rows."""
        g, self.total = epoch_generator(self.seed, self.epoch, world()[0]), n // self.batch
        order = torch.randperm(n, generator=g)[:self.total * self.batch].to(device)
        self.bar = progress(order.view(self.total, self.batch), desc=self.desc)
        return self.bar

    def add(self, **terms: torch.Tensor):
        """One step's terms (scalar tensors; "loss" among them), summed without a sync."""
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0) + value.detach()
        if self.steps % 50 == 0:  # a sync every 50 steps: progress bar and divergence check
            self.bar.set_postfix({k: f"{v.item():.4g}" for k, v in terms.items()})
            stop_if_diverged(terms["loss"].item(), self.epoch, self.folder)
        self.steps += 1

    def end(self, **logged) -> dict:
        """The terms' means (over steps and processes), checked, and the log line with
        `logged` (the learning rate, ...); returns the means."""
        sums = mean_over_processes(torch.stack([v.float() for v in self.sums.values()]))
        means = dict(zip(self.sums, (sums / self.steps).tolist()))
        stop_if_diverged(means["loss"], self.epoch, self.folder)
        seconds = time.time() - self.started
        log_epoch(self.folder, {"epoch": self.epoch + 1, **means, **logged, "seconds": seconds,
                                "images_per_sec": self.steps * self.images / seconds})
        return means


def save_epoch(folder: Path, method: str, args, epoch: int, model, optimizer,
               data_shape, **extra) -> dict:
    """The end-of-epoch checkpoint (atomic; every process calls it, rank 0 writes), with any
    `extra` tensors of the method; returns what it holds."""
    state = {"method": method, "args": dataclasses.asdict(args), "data_shape": list(data_shape),
             "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "rng": rng_state(), "samplers": {}, **extra}
    if world()[1] > 1:  # each process's own random stream, so that --resume continues them
        state["rng_per_process"] = [None] * world()[1]
        torch.distributed.all_gather_object(state["rng_per_process"], rng_state())
    atomic_save(state, folder / CHECKPOINT)
    LAST_SAVED[:] = [folder, f"the checkpoint of epoch {epoch + 1}", "--resume"]
    return state


def keep_log_until(folder: Path, epoch: int):
    """log.jsonl without the training epochs after `epoch` (from 1): those of a run stopped
    after its last checkpoint, which the resumed run trains and logs again."""
    path = folder / "log.jsonl"
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("stage") or
            json.loads(line).get("epoch", 0) <= epoch]
    if len(kept) < len(lines):
        tmp = folder / ".log.jsonl.tmp"
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)


def keep_samplers(state: dict, samplers: dict, model: nn.Module, test_images: torch.Tensor,
                  folder: Path, seed: int, images=None) -> Run:
    """The ex-post samplers, stored in the checkpoint `state` (beside any it holds for these
    weights already: --fit-lde's LDE; a checkpoint of a trained epoch holds none), and grids
    of 64 decoded samples of each and of interpolations between test images (rank 0 writes).
    `images`: the model's codes -> images, where not the sigmoid of its decoder."""
    state["samplers"] = {**state["samplers"], **{k: v.state_dict() for k, v in samplers.items()}}
    atomic_save(state, folder / CHECKPOINT)
    run = Run(model, state["args"], samplers, folder, images)
    save_sample_grids(run, seed)
    save_interpolations(run, test_images.float() / 255, folder / "interpolations.png")
    return run


def method_module(name: str):
    """A method file of this project, imported by name (never another module)."""
    if not (name.isidentifier() and (Path(__file__).parent / f"{name}.py").is_file()):
        raise UserError(f"'{name}' is not a method file of this project")
    return importlib.import_module(name)


def method_of(run_dir: str):
    """The method file (module) that wrote a run, imported: eval.py and iae_lde.py use its
    load_run / encode / decode / sample, whatever the method."""
    name = load_checkpoint(run_dir).get("method", "")
    try:
        return method_module(name)
    except UserError:
        raise UserError(f"{run_dir} was not written by a method file of this project "
                        f"(method '{name}')") from None


def load_run(run_dir: str, device, build) -> Run:
    """A trained run: build(args, data_shape) makes the model; weights loaded, eval mode."""
    checkpoint = load_checkpoint(run_dir)
    model = build(checkpoint["args"], checkpoint["data_shape"])
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    samplers = samplers_from_state(checkpoint["samplers"])
    return Run(model, checkpoint["args"], samplers, Path(run_dir))


# === 3. Evaluation, for eval.py: the papers' figures, FID, KID, IS, precision / recall ====
def as_compared(args: dict) -> dict:
    """Settings as a paper's are compared with: --depth 1 1 1 1 is --depth 1."""
    depth = args.get("depth")
    return {**args, "depth": depth[:1]} if depth and len(set(depth)) == 1 else args


def off_paper(args: dict, paper: dict) -> list[str]:
    """The settings of a run that differ from `paper` (the paper's values of every field
    of the method's Args that changes the result), as flags; empty when the run is the
    paper's setting. A paper's figure is printed beside ours only then."""
    args, paper = as_compared(args), as_compared(paper)
    return sorted("--" + k.replace("_", "-") for k, v in paper.items()
                  if k not in NOT_A_SETTING and args.get(k) != v)


def paper_row(args: dict, ref: str, table: dict, keyed: tuple, settings) -> dict:
    """A paper's figures for a run: the row of `table` that the run's `keyed` settings select
    (lists as tuples), only against the test split and when every other setting that
    matters is that of the paper's run, `settings(key)`; empty otherwise."""
    args = as_compared(args)
    key = tuple(tuple(v) if isinstance(v, list) else v for v in (args[k] for k in keyed))
    if ref != "test" or key not in table or off_paper(args, settings(key)):
        return {}
    return table[key]


INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's port of the TF graph
# How images become features; part of every cached statistic's name, with the weights' hash.
FEATURE_PROTOCOL = "8bit-bilinear299-pool3"
# torch-fidelity's fixed random seed: the IS splits' shuffle and the KID subsets are its draws.
FIDELITY_SEED = 2020


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def exact_matmul():
    """TF32 off for matrix products and convolutions (CUDA's default here is on, for
    training): every metric is computed in full fp32 or float64, on any device."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def tf1_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1's resize_bilinear (align_corners False, no half-pixel centres), as
    torch-fidelity feeds its Inception: output pixel i reads the input at i * in / out,
    between the pixels floor and floor + 1 (the last repeated); [B, C, H, W] -> [B, C, S, S]."""
    def grid(side):  # positions in fp32, as TensorFlow computes them
        position = torch.arange(size, dtype=torch.float32, device=x.device) * torch.tensor(
            side / size, dtype=torch.float32)
        low = position.long()
        return low, (low + 1).clamp(max=side - 1), position - low.float()

    (top, bottom, dy), (left, right, dx) = grid(x.shape[2]), grid(x.shape[3])
    rows = [x[:, :, index] for index in (top, bottom)]  # [B, C, S, W] each
    upper, lower = (r[..., left] + (r[..., right] - r[..., left]) * dx for r in rows)
    return upper + (lower - upper) * dy[:, None]  # [B, C, S, S]


class Inception(nn.Module):
    """pytorch-fid's FID Inception network (the 2015-12-05 TF weights), on two input paths:
    pytorch-fid's (images in [0, 1], PyTorch's bilinear resize to 299, scaled to [-1, 1])
    gives the 2048-d pool3 features of FID, KID and precision / recall; torch-fidelity's
    (8-bit values, TensorFlow 1's bilinear resize, (x - 128) / 128) gives the 1008 IS
    logits, pool3 @ fc.weight^T without the bias, as torch-fidelity computes them."""

    def __init__(self):
        super().__init__()
        from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3, load_state_dict_from_url

        try:
            self.net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=False,
                                   normalize_input=False)
            fc_weight = load_state_dict_from_url(FID_WEIGHTS_URL, progress=False)["fc.weight"]
        except (OSError, RuntimeError) as error:
            raise missing_weights("the Inception weights", FID_WEIGHTS_URL, error) from None
        self.register_buffer("fc_weight", fc_weight)  # [1008, 2048]
        # Which weights these are: cached reference statistics carry it in their name.
        self.weights_digest = file_digest(Path(torch.hub.get_dir()) / "checkpoints" /
                                          Path(FID_WEIGHTS_URL).name)
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor, logits: bool = True):
        """Images [B, C, H, W] in [0, 1] -> pool3 features [B, 2048] and (with `logits`) IS
        logits [B, 1008], float64."""
        x = (images.float().clamp(0, 1) * 255).round()  # 8-bit values, as a PNG stores them
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # grey -> RGB, [B, 3, H, W]
        with torch.autocast(x.device.type, enabled=False), exact_matmul():
            fid = F.interpolate(x / 255, size=(299, 299), mode="bilinear", align_corners=False)
            pool = self.net(fid * 2 - 1)[0].flatten(1).double()  # pytorch-fid's path
            if not logits:
                return pool, None
            fidelity = (tf1_bilinear(x, 299) - 128) / 128  # torch-fidelity's path
            return pool, (self.net(fidelity)[0].flatten(1) @ self.fc_weight.T).double()


def inception_outputs(net: Inception, batches, total: int | None = None, desc: str = "",
                      logits: bool = True):
    """pool3 features [N, 2048] and (with `logits`, else None) IS logits [N, 1008], float64,
    on the network's device, where FID, IS and precision / recall are then computed, of an
    iterable of image batches in [0, 1]; computed in fp32 with TF32 off."""
    from tqdm import tqdm

    device = net.fc_weight.device
    features, logit_rows = [], []
    for x in tqdm(batches, total=total, desc=desc, leave=False, mininterval=2):
        pool, logit = net(x.to(device), logits)
        features.append(pool)
        logit_rows.append(logit)
    return torch.cat(features), torch.cat(logit_rows) if logits else None


def gaussian_stats(features: torch.Tensor):
    """Mean and covariance (float64, unbiased as numpy's np.cov) of features [N, D]."""
    if len(features) < 2:
        raise UserError(f"a covariance needs at least 2 samples, got {len(features)}")
    features = features.double()
    return features.mean(0), torch.cov(features.T)


def psd_sqrt(sigma) -> torch.Tensor:
    """The symmetric square root of a covariance (float64), from its eigendecomposition."""
    eigvals, eigvecs = torch.linalg.eigh(torch.as_tensor(sigma, dtype=torch.float64))
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2, root1=None) -> float:
    """FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), in float64.
    tr((S1 S2)^(1/2)) = sum sqrt(eig(A S2 A)) with A = S1^(1/2): A S2 A is symmetric with the
    eigenvalues of S1 S2, so two symmetric eigendecompositions replace scipy's sqrtm.
    root1: S1^(1/2) when known (eval.py takes the reference's once for all its columns)."""
    mu1, sigma1, mu2, sigma2 = (torch.as_tensor(t, dtype=torch.float64)
                                for t in (mu1, sigma1, mu2, sigma2))
    root1 = psd_sqrt(sigma1) if root1 is None else root1
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return (diff @ diff + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt).item()


def fidelity_rng():
    """torch-fidelity's random draws: numpy's generator seeded 2020."""
    import numpy as np

    return np.random.RandomState(FIDELITY_SEED)


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) on each of `splits` parts: (mean, std), as
    torch-fidelity: the logits shuffled first (its seeded permutation, so that images in
    data-set order are not split by class), part i rows i N // splits to (i + 1) N // splits."""
    n, splits = len(logits), min(splits, len(logits))  # (a smoke test's few: one each)
    order = torch.as_tensor(fidelity_rng().permutation(n), device=logits.device)
    logits, scores = logits.double()[order], []
    for i in range(splits):
        log_p = torch.log_softmax(logits[i * n // splits:(i + 1) * n // splits], 1)  # [n_i, K]
        log_py = torch.logsumexp(log_p, 0) - math.log(len(log_p))  # log p(y), [K]
        kl = (log_p.exp() * (log_p - log_py)).sum(1).mean()
        scores.append(kl.exp())
    scores = torch.stack(scores)
    return scores.mean().item(), scores.std(unbiased=False).item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, batch: int = 1000):
    """Improved precision and recall (Kynkaanniemi et al. 2019): the fraction of fake
    features inside the k-NN balls of the real ones, and of real inside the fake balls. Both
    depend on the set sizes, so they are computed on sets of equal size: the larger set is
    cut to a random subset (torch-fidelity's generator) of the smaller's size."""

    def radii(x):  # distance of each point to its k-th nearest neighbour in its own set
        return torch.cat([torch.cdist(x[i:i + batch], x).kthvalue(k + 1, 1).values
                          for i in range(0, len(x), batch)])

    def covered(points, centres, centre_radii):
        return torch.cat([(torch.cdist(points[i:i + batch], centres) <= centre_radii).any(1)
                          for i in range(0, len(points), batch)]).double().mean().item()

    n = min(len(real), len(fake))
    if n <= k:  # no k-th neighbour: undefined (a smoke test)
        return None, None
    real, fake = (x if len(x) == n else x[torch.as_tensor(
        fidelity_rng().choice(len(x), n, replace=False), device=x.device)] for x in (real, fake))
    real, fake = real.float(), fake.float()
    with exact_matmul():
        return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def kernel_inception_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int,
                              subset_size: int):
    """KID (Binkowski et al. 2018) as torch-fidelity computes it: on each of `subsets` random
    pairs of subsets (m = subset_size images each, fewer when a set is smaller; torch-fidelity's
    draws: the generated images' subset, then the reference's, each without replacement), the
    unbiased MMD^2 with the kernel k(x, y) = (x . y / D + 1)^3 on the D-dim features:
        (sum_{i != j} k(x_i, x_j) + sum_{i != j} k(y_i, y_j)) / (m (m - 1))
        - 2 sum_{i, j} k(x_i, y_j) / m^2.
    Returns (mean, std) over the subsets; the std is None where every subset is the whole of
    both sets (then there is no spread to show); None, None with fewer than 2 images."""
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        return None, None
    rng = fidelity_rng()
    real, fake = real.double(), fake.double()
    kernel = lambda a, b: (a @ b.T / real.shape[1] + 1) ** 3  # noqa: E731
    values = []
    for _ in range(subsets):
        y = fake[torch.as_tensor(rng.choice(len(fake), m, replace=False), device=fake.device)]
        x = real[torch.as_tensor(rng.choice(len(real), m, replace=False), device=real.device)]
        k_xx, k_yy = kernel(x, x), kernel(y, y)
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum())
        values.append(within / (m * (m - 1)) - 2 * kernel(x, y).sum() / m ** 2)
    values = torch.stack(values)
    whole = m == len(real) == len(fake)
    return values.mean().item(), None if whole else values.std(unbiased=False).item()

