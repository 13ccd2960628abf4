"""Benchmarks (not collected by pytest): training step and evaluation helpers.

    python tests/benchmark.py                 # both sections on the default device
    python tests/benchmark.py --section train --device cuda --compile
    python tests/benchmark.py --section eval --images 500
    python tests/benchmark.py --method deciphering [--batches 32 256] [--compile]

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

--method deciphering: deciphering.py's training step at the paper's full model (18.1M
parameters, LPIPS-AlexNet at 128x128) for each batch size, split into data (flip, shift,
masks, noise), forward, LPIPS, backward and optimizer + EMA, each phase synchronised; the
whole step unsynchronised gives the seconds per CIFAR-10 epoch (195 steps of 256). Then the
vectorised shift against the official per-image loop (CPU tensors, then copied over).
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


def deciphering_section(device_name: str, batch_sizes, steps: int, compile: bool):
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    import torch.nn.functional as F

    import common
    import deciphering as D
    from fakes import write_random_alexnet

    device = common.pick_device(device_name)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        lpips_net, weights = D.load_lpips(device), "real"
    except common.UserError:
        os.environ["TORCH_HOME"] = tempfile.mkdtemp()
        write_random_alexnet(Path(os.environ["TORCH_HOME"]))
        lpips_net, weights = D.load_lpips(device), "random"
    args = D.Args()
    print(f"\n| deciphering step, {device}, torch {torch.__version__}, LPIPS ({weights} AlexNet)"
          f"{', compiled' if compile else ''} | batch | data | forward | LPIPS | backward | "
          f"optimizer + EMA | step (unsynced) | s / CIFAR-10 epoch | peak memory |\n"
          + "|---" * 10 + "|")
    for batch in batch_sizes:
        torch.manual_seed(0)
        model = D.DecipheringAE(3, 32, args.widths, args.latent_dim).to(device)
        memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        model = model.to(memory_format=memory_format).train()
        forward = torch.compile(model) if compile else model
        mlp = list(model.shift_mlp.parameters())
        others = [p for n, p in model.named_parameters() if not n.startswith("shift_mlp.")]
        optimizer = torch.optim.AdamW([{"params": others}, {"params": mlp, "lr": 2e-4}], lr=2e-3,
                                      weight_decay=0.08)
        ema = D.EMA(model)
        images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
        patterns = D.make_patterns(torch.randint(32, (batch,)), args).to(device)
        times = {k: 0.0 for k in ("data", "forward", "lpips", "backward", "optimizer")}

        def step(phases: bool, number: int):
            clock = [time.perf_counter()]

            def mark(name):
                if phases:
                    sync()
                    times[name] += time.perf_counter() - clock[0]
                    clock[0] = time.perf_counter()

            x = images.float().div_(127.5).sub_(1).flip(3).contiguous(memory_format=memory_format)
            codes = D.flip_patterns(patterns, args)
            shifts = torch.randint(-8, 9, (batch,), device=device)
            target, noise = D.shift_images(x, shifts, 8), torch.randn_like(x)
            masks, position = D.masks_of(codes, args), D.shift_position(shifts, 8)
            mark("data")
            with common.autocast(device):
                output = forward(noise, masks, position)
                mark("forward")
                loss = D.lpips_loss(lpips_net, output, target, 128)
                mark("lpips")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            mark("backward")
            optimizer.step()
            ema.update(model, number, 0.99995)
            mark("optimizer")

        for i in range(3 if compile else 1):  # warm-up (and compilation)
            step(False, i)
        for k in times:
            times[k] = 0.0
        for i in range(steps):
            step(True, 1000 + i)  # EMA updates on every tenth step, as in training
        sync()
        started = time.perf_counter()
        for i in range(steps):
            step(False, 2000 + i)
        sync()
        per_step = (time.perf_counter() - started) / steps
        if device.type == "cuda":
            peak_mb = torch.cuda.max_memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
        else:
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        cells = " | ".join(f"{times[k] / steps * 1000:.0f} ms" for k in times)
        print(f"| | {batch} | {cells} | {per_step * 1000:.0f} ms | "
              f"{per_step * (50_000 // batch):.1f} | {peak_mb:.0f} MiB |")

    x = torch.rand(256, 3, 32, 32, device=device)
    shifts = torch.randint(-8, 9, (256,), device=device)

    def per_image_loop():  # the official code: one image at a time on the CPU, then copied
        out = []
        for image, r in zip(x.cpu(), shifts.tolist()):
            if r > 0:
                image = F.pad(image[None], (r, 0, 0, 0), mode="reflect")[0, ..., :-r]
            elif r < 0:
                image = F.pad(image[None], (0, -r, 0, 0), mode="reflect")[0, ..., -r:]
            out.append(image)
        return torch.stack(out).to(device)

    assert torch.equal(per_image_loop(), D.shift_images(x, shifts, 8))
    repeats = 20
    _, loop_s = timed(lambda: [per_image_loop() for _ in range(repeats)], sync=sync)
    _, ours_s = timed(lambda: [D.shift_images(x, shifts, 8) for _ in range(repeats)], sync=sync)
    print(f"\n| shift of a batch of 256, {device} | ms |\n|---|---|\n"
          f"| vectorised (gather on the device) | {ours_s / repeats * 1000:.2f} |\n"
          f"| per-image loop (official) | {loop_s / repeats * 1000:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", default="all", choices=("all", "train", "eval"))
    parser.add_argument("--method", default="dae", choices=("dae", "deciphering"),
                        help="whose training step: dae.py's (--section train) or deciphering.py's")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256],
                        help="batch sizes of the deciphering step")
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
    if args.method == "deciphering":
        import torch

        gpu = torch.cuda.is_available() and args.device != "cpu"
        deciphering_section(args.device, args.batches, args.steps or (20 if gpu else 2),
                            args.compile)
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
