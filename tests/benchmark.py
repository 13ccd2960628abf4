"""Benchmark of every method's training step and of eval.py (not collected by pytest).

    python tests/benchmark.py --device cuda            # the papers' configurations, GPU
    python tests/benchmark.py --device cpu --small     # small configurations, CPU
    python tests/benchmark.py --methods dae deciphering --steps 50 --json out.json

Training: one row per method and mode: dae, vae, each RAE variant, eae, iae (stage one),
lde (stage two) and deciphering, each built from its own file's model, loss and optimiser
(the paper's configuration: CIFAR-10 shaped batches, the paper's width and batch size;
--small: narrow networks, batch 32). A step is split into forward, loss, backward and
optimizer (+ EMA for the deciphering AE), each timed after warm-up steps (compilation
excluded) with CUDA events on the GPU, the clock on the CPU. Modes on CUDA: fp32 (TF32
off), bf16 autocast, bf16 + channels_last (what the method files run), and the same
compiled (--compile; not for RAE-GP, which differentiates twice). On the CPU: fp32 only.
Columns: images/s, ms per step and per phase, peak memory (CUDA: per row; CPU: the
process's peak so far), and the projected time of the paper's whole protocol (epochs x
steps per epoch x ms per step; e.g. deciphering 1000 + 2000 epochs of CIFAR-10).

Evaluation: the time of one eval.py column: 10,000 samples (--small: 200) of a DAE drawn,
decoded, passed through the FID Inception, and scored (FID, IS, precision / recall), all on
the device; and our Frechet distance against pytorch-fid's scipy sqrtm.

Without the real AlexNet, VGG19 or Inception weights (no network) random ones stand in:
the timing is the same. Prints one markdown table per section; --json writes all rows.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

import common  # noqa: E402

METHODS = ("dae", "vae", "rae-l2", "rae-gp", "rae-sn", "rae", "ae", "eae", "iae", "lde",
           "deciphering")
CIFAR_TRAIN = 50_000
RANDOM_HOME = ""  # the temporary TORCH_HOME of random weights, once written


@dataclasses.dataclass
class Step:
    """One method's training step, cut into phases: what each phase calls is the method
    file's own model, loss and optimiser."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batch: callable  # () -> inputs
    forward: callable  # (module, inputs) -> outputs
    loss: callable  # (outputs, inputs) -> scalar
    after: callable = lambda step: None  # after optimizer.step (EMA)
    images: int = 0  # images per step
    protocol: tuple = ()  # (epochs, training images) of the paper's protocol


def pretrained(make):
    """make() with the real pretrained weights if torch's cache has them, else with random
    ones written into a temporary TORCH_HOME (offline): ("real" | "random", its result)."""
    global RANDOM_HOME
    try:
        return "random" if RANDOM_HOME else "real", make()
    except common.UserError:
        from fakes import write_random_alexnet, write_random_inception, write_random_vgg19

        RANDOM_HOME = os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="bench-torch-")
        for write in (write_random_alexnet, write_random_inception, write_random_vgg19):
            write(Path(RANDOM_HOME))
        return "random", make()


def build(method: str, device, small: bool) -> Step:
    torch.manual_seed(0)
    g = torch.Generator(device=device).manual_seed(0)
    f = 16 if small else 128
    images = lambda n: torch.rand(n, 3, 32, 32, device=device, generator=g)  # noqa: E731
    if method not in ("iae", "lde", "deciphering"):  # the backbone methods
        import dae, eae, rae, vae  # noqa: E401

        if method == "dae":
            args = dae.Args(filters=f, batch_size=32 if small else 128)
            model, loss = dae.DAE(args, 3, 32), lambda out, x: dae.reconstruction_loss(out[0], x)
            protocol = (100, CIFAR_TRAIN)
        elif method == "vae":
            args = vae.Args(filters=f, batch_size=32 if small else 128)
            model = vae.VAE(args, 3, 32)
            loss = lambda out, x: vae.vae_loss(out[0], x, *out[1:], "bce", 0.01)["loss"]  # noqa
            protocol = (100, CIFAR_TRAIN)
        elif method == "eae":
            args = eae.paper_regulariser(eae.Args(filters=f, batch_size=32 if small else 100))
            model = eae.EAE(args, 3, 32)
            loss = lambda out, x: eae.eae_loss(  # noqa: E731
                out[0], x, out[1], eae.decoder_l2(model), args)["loss"]
            protocol = (100, CIFAR_TRAIN)
        else:
            args = rae.Args(variant=method, filters=f, batch_size=32 if small else 100)
            model = rae.RAE(args, 3, 32)
            beta, reg = rae.weights(args, 3 * 32 * 32)
            loss = lambda out, x: rae.rae_loss(  # noqa: E731
                rae.loss_terms(model, x, args, lambda _: out), beta, reg)
            protocol = (70 if method == "rae-gp" else 100, CIFAR_TRAIN * 9 // 10)
        model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-7)
        batch = args.batch_size
        return Step(model, optimizer, lambda: images(batch), lambda m, x: m(x), loss,
                    images=batch, protocol=protocol)
    if method == "iae":
        import iae_lde as I

        args = I.with_dataset_defaults(I.Args(dataset="cifar10", filters=16 if small else 64,
                                              batch_size=32 if small else 128),
                                       {"filters", "batch_size"})  # CIFAR-10's official
        model = I.IAE(args, 3, 32).to(device)
        perceptual = pretrained(I.Perceptual)[1].to(device) if args.perc_weight else None
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.5, 0.999))
        return Step(model, optimizer, lambda: images(args.batch_size),
                    lambda m, x: m(x, args.latent_dim),
                    lambda out, x: I.autoencoder_loss(out[0], x, model.low, perceptual,
                                                      args.perc_weight),
                    images=args.batch_size, protocol=(args.epochs, CIFAR_TRAIN))
    if method == "lde":
        import iae_lde as I

        args = I.with_dataset_defaults(I.Args(dataset="cifar10"), set())
        d = 16 if small else args.latent_dim
        model = I.LDE(d, args.lde_components).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lde_lr, betas=(0.5, 0.999))
        codes = lambda: torch.randn(args.lde_batch_size, d, device=device, generator=g)  # noqa
        return Step(model, optimizer, codes, lambda m, z: m(z),
                    lambda out, z: I.mixture_nll(*out, z).mean(),
                    images=args.lde_batch_size, protocol=(args.lde_epochs, CIFAR_TRAIN))
    if method == "deciphering":
        import copy

        import deciphering as D

        small_widths = dict(widths=[32, 64, 128, 256], active=[1, 2, 4], clusters=4,
                            latent_dim=32, batch_size=32, lpips_size=64)
        args = D.Args(**small_widths) if small else D.Args()
        model = D.DecipheringAE(3, 32, args.widths, args.latent_dim).to(device)
        ema = copy.deepcopy(model).requires_grad_(False)
        lpips_net = pretrained(lambda: D.load_lpips(device))[1]
        others = [p for n, p in model.named_parameters() if not n.startswith("shift_mlp.")]
        optimizer = torch.optim.AdamW([{"params": others},
                                       {"params": list(model.shift_mlp.parameters()),
                                        "lr": args.mlp_lr}], lr=args.lr, weight_decay=0.08)
        uint8 = torch.randint(0, 256, (args.batch_size, 3, 32, 32), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(0)).to(device)
        patterns = D.make_patterns(torch.arange(args.batch_size) % args.clusters, args).to(device)
        return Step(model, optimizer, lambda: D.training_batch(uint8, patterns, args, 1),
                    lambda m, inputs: m(*inputs[:3]),
                    lambda out, inputs: D.lpips_loss(lpips_net, out, inputs[3], args.lpips_size),
                    after=lambda step: D.update_ema(ema, model, 1000 + step, args.ema_decay),
                    images=args.batch_size, protocol=(1000 + 2000, CIFAR_TRAIN))
    raise ValueError(method)


class Clock:
    """Phase times: CUDA events on the GPU (no synchronisation inside the step), the wall
    clock on the CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def between(self, a, b) -> float:  # milliseconds
        return a.elapsed_time(b) if self.cuda else (b - a) * 1000


PHASES = ("forward", "loss", "backward", "optimizer")


def measure(method: str, device, mode: str, small: bool, steps: int, warmup: int) -> dict:
    step = build(method, device, small)
    cuda = device.type == "cuda"
    bf16, channels_last, compiled = "bf16" in mode, "channels_last" in mode, "compile" in mode
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cuda and bf16
    model = step.model.to(memory_format=torch.channels_last) if channels_last else step.model
    module = torch.compile(model) if compiled else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else None
    clock, times = Clock(device), {p: 0.0 for p in PHASES}
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def run(number: int, record: bool):
        inputs = step.batch()
        if channels_last and isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        marks = [clock.mark()]
        with autocast or torch.autocast("cpu", enabled=False):
            outputs = step.forward(module, inputs)
            marks.append(clock.mark())
            loss = step.loss(outputs, inputs)
            marks.append(clock.mark())
        step.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(clock.mark())
        step.optimizer.step()
        step.after(number)
        marks.append(clock.mark())
        if record:
            if cuda:
                torch.cuda.synchronize()
            for phase, a, b in zip(PHASES, marks, marks[1:]):
                times[phase] += clock.between(a, b)
        return loss

    for number in range(warmup):
        run(number, False)
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for number in range(warmup, warmup + steps):
        loss = run(number, True)
    if cuda:
        torch.cuda.synchronize()
    ms = (time.perf_counter() - started) / steps * 1000
    epochs, train_images = step.protocol
    peak = (torch.cuda.max_memory_allocated() if cuda else
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 20
    return {"method": method, "mode": mode, "config": "small" if small else "paper",
            "batch": step.images, "ms_per_step": ms, "images_per_sec": step.images / ms * 1000,
            **{f"{p}_ms": times[p] / steps for p in PHASES}, "peak_mib": peak,
            "loss": loss.item(), "seconds_per_epoch": ms / 1000 * (train_images // step.images),
            "protocol_hours": ms / 1000 * (train_images // step.images) * epochs / 3600,
            "params_m": sum(p.numel() for p in step.model.parameters()) / 1e6}


def modes(device, compile: bool) -> list[str]:
    if device.type != "cuda":
        return ["fp32"]
    return ["fp32", "bf16", "bf16+channels_last"] + (["bf16+channels_last+compile"]
                                                      if compile else [])


def train_section(device, methods, small, steps, warmup, compile) -> list[dict]:
    rows = []
    print(f"\n| method | mode | batch | images/s | ms / step | forward | loss | backward | "
          f"optimizer | peak MiB | s / epoch | paper's protocol |\n" + "|---" * 12 + "|")
    for method in methods:
        for mode in modes(device, compile):
            if "compile" in mode and method == "rae-gp":
                continue  # double backward: runs eagerly in rae.py too
            r = measure(method, device, mode, small, steps, warmup)
            rows.append(r)
            print(f"| {method} | {mode} | {r['batch']} | {r['images_per_sec']:.0f} | "
                  f"{r['ms_per_step']:.1f} | " + " | ".join(f"{r[p + '_ms']:.1f}" for p in PHASES)
                  + f" | {r['peak_mib']:.0f} | {r['seconds_per_epoch']:.1f} | "
                  f"{r['protocol_hours']:.2f} h |", flush=True)
    return rows


def eval_section(device, small: bool, n: int) -> dict:
    """One eval.py column, timed whole: sampling, decoding, Inception, FID / IS / P-R."""
    import dae
    import eval as eval_module
    from pytorch_fid.fid_score import calculate_frechet_distance

    weights, net = pretrained(common.Inception)
    net = net.to(device)
    torch.manual_seed(0)
    model = dae.DAE(dae.Args(filters=16 if small else 128), 3, 32).to(device).eval()
    run = common.Run(model, {}, {"normal": common.normal_sampler(128)}, None)
    reference = torch.rand(n, 3, 32, 32)
    features, _ = common.inception_outputs(net, reference.split(250))
    mu, sigma = common.gaussian_stats(features)
    ref = {"features": features, "mu": mu, "sigma": sigma, "root": common.psd_sqrt(sigma)}
    args = eval_module.Args(num_samples=n)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    started = time.perf_counter()
    batches = eval_module.generated(dae, run, "normal", n, args, None)
    scores = eval_module.score(net, batches, ref, args, desc="column",
                               total=math.ceil(n / args.batch_size))
    sync()
    column_s = time.perf_counter() - started
    print(f"\n| eval.py, one column, {device} ({weights} Inception) | samples | seconds |\n"
          f"|---|---|---|\n| sample + decode + Inception + FID, IS, P/R | {n} | {column_s:.1f} |")
    result = {"samples": n, "column_seconds": column_s, "fid": scores["fid"]}
    if not small:  # the Frechet distance alone, ours (on the device) against scipy's sqrtm
        timed = {}
        for name, frechet in (("ours", common.frechet_distance),
                              ("scipy", lambda *a: calculate_frechet_distance(
                                  *(t.cpu().numpy() for t in a)))):
            started = time.perf_counter()
            value = frechet(mu, sigma, mu + 0.01, sigma)
            timed[name] = time.perf_counter() - started
            print(f"| Frechet distance alone, {name}, 2048-d | | {timed[name]:.2f} ({value:.4f}) |")
        result.update(frechet_ours_seconds=timed["ours"], frechet_scipy_seconds=timed["scipy"])
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--small", action="store_true", help="small configurations")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--section", default="all", choices=("all", "train", "eval"))
    parser.add_argument("--steps", type=int, default=0, help="timed steps (0: 20 GPU, 2 CPU)")
    parser.add_argument("--warmup", type=int, default=-1, help="untimed steps (-1: 5 GPU, 1 CPU)")
    parser.add_argument("--compile", action="store_true", help="also a torch.compile row")
    parser.add_argument("--eval-samples", type=int, default=0,
                        help="samples of the eval.py column (0: 10,000; 200 with --small)")
    parser.add_argument("--json", default="", help="write every row here")
    args = parser.parse_args(argv)
    device = common.pick_device(args.device)
    gpu = device.type == "cuda"
    steps, warmup = args.steps or (20 if gpu else 2), args.warmup if args.warmup >= 0 else (
        5 if gpu else 1)
    name = torch.cuda.get_device_name(device) if gpu else "CPU"
    print(f"{name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
          f"{'small' if args.small else 'paper'} configurations")
    result = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    if args.section in ("all", "train"):
        result["train"] = train_section(device, args.methods, args.small, steps, warmup,
                                        args.compile)
    if args.section in ("all", "eval"):
        result["eval"] = eval_section(device, args.small,
                                      args.eval_samples or (200 if args.small else 10_000))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
