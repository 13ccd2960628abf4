"""Stand-ins for downloads the tests and the benchmark cannot make offline, and the tests'
synthetic data set."""
from pathlib import Path
from unittest import mock

import torch


def fake_images(split: str, image_size: int = 32) -> torch.Tensor:
    """Deterministic synthetic RGB images (coloured Gaussian blobs), uint8 [N, 3, S, S]: 256
    for train, 64 for test. The tests' dataset "fake" (conftest), not a --dataset choice."""
    n = 256 if split == "train" else 64
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    axis = torch.linspace(-1, 1, image_size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    centres = torch.rand(n, 3, 2, generator=g) * 1.6 - 0.8  # three blobs per image
    colours = torch.rand(n, 3, 3, 1, 1, generator=g)
    dist2 = (xx - centres[..., 0, None, None]) ** 2 + (yy - centres[..., 1, None, None]) ** 2
    blobs = torch.exp(-dist2 / 0.08)[:, :, None]  # [N, 3 blobs, 1, S, S]
    images = (blobs * colours).sum(1).clamp(0, 1)  # [N, 3, S, S]
    return (images * 255).round().to(torch.uint8)


def write_fake_folder(root: Path) -> Path:
    """The fake images as an image folder (train/ and test/, PNG) for scripts started as
    subprocesses: --dataset folder --data-root ROOT reads the same images."""
    from PIL import Image

    for split in ("train", "test"):
        folder = Path(root) / split / "blobs"
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(fake_images(split)):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    return Path(root)


def write_random_inception(torch_home: Path, seed: int = 0) -> Path:
    """Random FID-Inception weights under pytorch-fid's file name in TORCH_HOME, where its
    real loader looks; returns the file. Only the values are fake: the architecture and
    the loading code are pytorch-fid's own."""
    from pytorch_fid import inception

    import common

    torch.manual_seed(seed)
    with mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(torch.nn.Module, "load_state_dict", lambda *a, **k: None):
        net = inception.fid_inception_v3()  # the architecture, left at its random init
    # Random weights make the activations vanish (~1e-8) through 90 layers; batch-norm
    # statistics of one batch of noise bring every layer back to unit scale, so that
    # features have a sensible size.
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch sets the statistics
    with torch.no_grad():
        net.train()(torch.rand(16, 3, 299, 299) * 2 - 1)
    path = Path(torch_home) / "hub" / "checkpoints" / common.INCEPTION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def write_random_alexnet(torch_home: Path, seed: int = 0) -> Path:
    """Random AlexNet weights under torchvision's file name in TORCH_HOME, where
    lpips.LPIPS(net='alex') loads them from; returns the file."""
    import torchvision

    torch.manual_seed(seed)
    url = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url
    path = Path(torch_home) / "hub" / "checkpoints" / Path(url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.alexnet().state_dict(), path)
    return path


def write_random_vgg19(torch_home: Path, seed: int = 0) -> Path:
    """Random VGG19 feature weights under torchvision's file name in TORCH_HOME, where
    iae_lde.py's perceptual loss loads them from; returns the file. The classifier
    (120M parameters the loss never reads) is left out to keep the file small."""
    import torchvision

    torch.manual_seed(seed)
    path = Path(torch_home) / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    features = torchvision.models.vgg19().features
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path
