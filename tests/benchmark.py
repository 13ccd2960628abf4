"""Benchmarks (not collected by pytest): training step and evaluation helpers.

    python tests/benchmark.py                 # both sections on the default device
    python tests/benchmark.py --section train --device cuda --compile
    python tests/benchmark.py --section eval --images 500

train: images/sec and peak memory of dae.py's step for the paper config (f=128) and a
small one (f=32). Each runs in a fresh process so that its peak memory is its own: on CUDA
torch.cuda.max_memory_allocated, on the CPU the process's peak resident set size. The step
is the one dae.py trains with: forward under bf16 autocast (CUDA), BCE, backward, Adam;
channels_last on CUDA; random 32x32x3 batches already on the device.

eval: our Frechet distance (symmetric eigendecompositions, on the device) against
pytorch-fid's calculate_frechet_distance (scipy sqrtm) at 2048-d from 10,000 samples each;
Inception features/sec of our tensor path against pytorch-fid's file path (PNG files,
DataLoader, get_activations) on the same images. Without the real Inception weights (no
network) random ones stand in: the timing is the same.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [("paper: f=128, latent 128, batch 128", 128, 128),
           ("small: f=32, latent 128, batch 128", 32, 128)]


def measure(filters: int, batch_size: int, device_name: str, steps: int, compile: bool):
    sys.path.insert(0, str(ROOT))
    import torch

    import common
    import dae

    device = common.pick_device(device_name)
    args = dae.Args(filters=filters, batch_size=batch_size)
    model = dae.DAE(args, 3, 32).to(device)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    forward = torch.compile(model) if compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    x = torch.rand(batch_size, 3, 32, 32, device=device).contiguous(memory_format=memory_format)

    def step():
        with common.autocast(device):
            logits, _ = forward(x)
        loss = dae.reconstruction_loss(logits, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3 if compile else 1):  # warm-up (and compilation)
        step()
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - started
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
    return {"images_per_sec": steps * batch_size / seconds, "peak_mb": peak_mb,
            "device": str(device), "torch": torch.__version__,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def timed(function, *args, sync=lambda: None, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    sync()
    return result, time.perf_counter() - started


def eval_section(device_name: str, n_images: int):
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from PIL import Image
    from pytorch_fid.fid_score import calculate_frechet_distance, get_activations
    from pytorch_fid.inception import InceptionV3

    import common
    from fakes import write_random_inception

    device = common.pick_device(device_name)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(2048, 2048, generator=g) / 2048 ** 0.5
    features = [torch.randn(10_000, 2048, generator=g) @ mixing * scale + shift
                for scale, shift in ((1.0, 0.0), (1.1, 0.05))]
    stats = [common.gaussian_stats(f) for f in features]
    on_device = [t.to(device) for pair in stats for t in pair]
    ours, ours_s = timed(common.frechet_distance, *on_device, sync=sync)
    numpy_stats = [t.numpy() for pair in stats for t in pair]
    theirs, theirs_s = timed(calculate_frechet_distance, *numpy_stats)
    print(f"\n| Frechet distance, 2048-d, 10,000 samples each | seconds | value |\n|---|---|---|\n"
          f"| ours, {device} (eigh) | {ours_s:.2f} | {ours:.6f} |\n"
          f"| pytorch-fid (scipy sqrtm, CPU) | {theirs_s:.2f} | {theirs:.6f} |")

    with tempfile.TemporaryDirectory() as tmp:
        weights = "real"
        try:
            net = common.Inception()
        except common.UserError:
            os.environ["TORCH_HOME"] = tmp
            write_random_inception(Path(tmp))
            net, weights = common.Inception(), "random"
        net = net.to(device)
        images = common.load_images("fake", "", "train")
        images = images.repeat(n_images // len(images) + 1, 1, 1, 1)[:n_images]
        files = []
        for i, image in enumerate(images):
            files.append(Path(tmp) / f"{i:05d}.png")
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(files[-1])
        batches = lambda: (x.float() / 255 for x in images.split(50))  # noqa: E731
        common.inception_outputs(net, batches())  # warm-up
        _, ours_s = timed(common.inception_outputs, net, batches(), sync=sync)
        workers = min(8, os.cpu_count() or 1)
        model = InceptionV3([3]).to(device)
        _, theirs_s = timed(get_activations, files, model, 50, 2048, device, workers, sync=sync)
    print(f"\n| Inception features ({weights} weights), {n_images} images 32x32 | images/s |\n"
          f"|---|---|\n| ours: tensors on {device}, pool3 + IS logits | {n_images / ours_s:.1f} |\n"
          f"| pytorch-fid: PNG files, DataLoader ({workers} workers) | {n_images / theirs_s:.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", default="all", choices=("all", "train", "eval"))
    parser.add_argument("--images", type=int, default=0,
                        help="images for the Inception throughput (0: 200 CPU, 5000 GPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (0: 5 CPU, 50 GPU)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--one", nargs=2, type=int, metavar=("FILTERS", "BATCH"),
                        help=argparse.SUPPRESS)  # internal: one configuration, JSON out
    args = parser.parse_args()
    if args.one:
        import torch

        steps = args.steps or (50 if torch.cuda.is_available() and args.device != "cpu" else 5)
        print(json.dumps(measure(*args.one, args.device, steps, args.compile)))
        return
    if args.section in ("all", "train"):
        train_section(args)
    if args.section in ("all", "eval"):
        import torch

        gpu = torch.cuda.is_available() and args.device != "cpu"
        eval_section(args.device, args.images or (5000 if gpu else 200))


def train_section(args):
    print("| config | device | params | images/s | peak memory |\n|---|---|---|---|---|")
    for name, filters, batch in CONFIGS:
        command = [sys.executable, __file__, "--one", str(filters), str(batch),
                   "--device", args.device, "--steps", str(args.steps)]
        output = subprocess.run(command + (["--compile"] if args.compile else []),
                                capture_output=True, text=True, check=True).stdout
        r = json.loads(output.strip().splitlines()[-1])
        print(f"| {name} | {r['device']} (torch {r['torch']}) | {r['params_m']:.1f}M | "
              f"{r['images_per_sec']:.0f} | {r['peak_mb']:.0f} MiB |")


if __name__ == "__main__":
    main()
