"""Training throughput and peak memory of dae.py's step (not collected by pytest).

    python tests/benchmark.py                 # paper config (f=128) and a small one (f=32)
    python tests/benchmark.py --device cuda --compile

Each configuration runs in a fresh process so that its peak memory is its own: on CUDA
torch.cuda.max_memory_allocated, on the CPU the process's peak resident set size. The
step is the one dae.py trains with: forward under bf16 autocast (CUDA), BCE, backward,
Adam; channels_last on CUDA; random 32x32x3 batches already on the device.
"""
import argparse
import json
import resource
import subprocess
import sys
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
