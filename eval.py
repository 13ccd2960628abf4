"""Evaluate any run: FID, IS and precision / recall of every sampler, as one table.

    python eval.py RUN_DIR                       # 10,000 samples per sampler, test reference
    python eval.py RUN_DIR --ref train --num-samples 50000 --save-samples samples/
    python eval.py --fid DIR_A DIR_B             # FID of two image folders (or .npz stats)

One protocol for every method, so that the columns of the papers' tables can be compared:
  - Generation: for each sampler the run offers (N(0, I), MVG, GMM and the method's own),
    --num-samples images drawn in one call from --seed and decoded on the device (so they
    do not depend on --batch-size); for methods with an encoder also
    REC (reconstructions of test images) and Interp (decoded midpoints of the codes of random
    test pairs, as the RAE paper). Each image is quantised to 8 bits, as a PNG would be.
  - Features: pytorch-fid's FID Inception (the 2015-12-05 TF weights), bilinear resize to
    299, fp32 with TF32 off; pool3 (2048-d) for FID and precision / recall, pool3 times the
    fc weight (no bias) for IS, as torch-fidelity.
  - FID against the reference split's statistics (--ref test: CIFAR-10's 10,000 test images,
    as Daly et al. and Ghosh et al.; --ref train: the training set, as Maeda's Table 1 also
    reports), computed with symmetric eigendecompositions in float64. Reference statistics are
    cached as DATA_ROOT/fid-stats/*.npz holding `mu` and `sigma` (pytorch-fid's format; check
    them with `python -m pytorch_fid FILE.npz OTHER`) and the features; the file name holds
    hashes of the reference images and of the Inception weights file, so statistics made with
    other weights (the tests' random ones, say) or other data are never read.
  - IS over 10 splits in order (mean and std); improved precision / recall with k = 3.
Figures from fewer than 2048 samples (the feature dimension) are biased and the table marks
them as smoke tests. None of the papers ships its evaluation code; the reference
implementations used TensorFlow's Inception, whose resize differs slightly from this one.

Each method file exposes the functions this file calls: load_run(run_dir, device) ->
common.Run, sample(run, n, sampler, seed), and where it has an encoder, encode(run, x) and
decode(run, z); paper_fid(args, ref) gives the paper's figures to print beside ours.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import common
from common import arg


@dataclass
class Args:
    run: str = arg("", "run folder to evaluate", positional=True)
    num_samples: int = arg(10000, "generated images per sampler (and REC / Interp)", low=2)
    ref: str = arg("test", "reference split for FID and precision / recall",
                   choices=("test", "train"))
    samplers: list[str] = arg([], "samplers to evaluate; [] means all the run offers")
    data_root: str = arg("", "data folder of the reference images; empty: the run's own")
    batch_size: int = arg(250, "images per generation / Inception batch", low=1)
    device: str = arg("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    seed: int = arg(0, "seed of the samples and of the test pairs")
    save_samples: str = arg("", "also write the generated images as PNG files here")
    fid: list[str] = arg([], "two image folders or .npz files: print their FID and stop")


# ----------------------------------------------------------------------------------------
# Reference statistics: one cached .npz per (data set, split, size, n)
# ----------------------------------------------------------------------------------------


def reference(net, run_args: dict, data_root: str, split: str, n: int, batch_size: int):
    """Features, mean and covariance of n reference images (a seeded random subset when
    the split holds more), cached next to the data under a name that holds a hash of the
    images, of the Inception weights and the feature protocol: a cache made with other
    weights or other data is never read."""
    dataset, size, crop = run_args["dataset"], run_args["image_size"], run_args["crop"]
    images = common.load_images(dataset, data_root, split, size, crop)
    if len(images) > n:
        images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n]]
    data_digest = hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]
    cache = (Path(data_root or ".") / "fid-stats" /
             f"{dataset}-{split}-n{len(images)}-data{data_digest}-"
             f"inception{net.weights_digest}-{common.FEATURE_PROTOCOL}.npz")
    device = net.fc_weight.device
    if cache.exists():
        with np.load(cache) as stored:
            return {k: torch.from_numpy(stored[k]).to(device) for k in ("features", "mu", "sigma")}
    features, _ = common.inception_outputs(
        net, (x.float() / 255 for x in images.split(batch_size)),
        math.ceil(len(images) / batch_size), f"reference {split}")
    mu, sigma = common.gaussian_stats(features)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, mu=mu.cpu().numpy(), sigma=sigma.cpu().numpy(),
             features=features.float().cpu().numpy())
    return {"features": features, "mu": mu, "sigma": sigma}


# ----------------------------------------------------------------------------------------
# Image sources: samplers, reconstructions, interpolations (all in batches, [0, 1])
# ----------------------------------------------------------------------------------------


def chunks(n: int, size: int):
    return [min(size, n - start) for start in range(0, n, size)]


def generated(method, run, sampler: str, n: int, args: Args, save_dir: Path | None):
    """The n samples of one sampler, drawn in one call (so that they do not depend on
    --batch-size: the deciphering sampler's batch norms see its own groups), then handed
    on in batches."""
    images = method.sample(run, n, sampler, seed=args.seed)  # [n, C, H, W] on the device
    for start in range(0, n, args.batch_size):
        batch = images[start:start + args.batch_size]
        if save_dir is not None:
            for j, image in enumerate(batch):
                common.save_grid(image[None], save_dir / f"{start + j:06d}.png", 1)
        yield batch


def reconstructed(method, run, test: torch.Tensor, batch_size: int):
    for x in test.split(batch_size):
        yield method.decode(run, method.encode(run, x.float() / 255))


def interpolated(method, run, test: torch.Tensor, n: int, args: Args):
    """Decoded midpoints of the codes of n random pairs of test images."""
    g = torch.Generator().manual_seed(args.seed)
    pairs = torch.randint(len(test), (n, 2), generator=g)
    for index in pairs.split(args.batch_size):
        codes = method.encode(run, test[index.flatten()].float() / 255)  # [2B, d]
        yield method.decode(run, (codes[0::2] + codes[1::2]) / 2)


# ----------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------


def score(net, batches, total: int, ref: dict, desc: str) -> dict:
    features, logits = common.inception_outputs(net, batches, total, desc)
    mu, sigma = common.gaussian_stats(features)
    is_mean, is_std = common.inception_score(logits)
    precision, recall = common.precision_recall(ref["features"], features)
    fid = common.frechet_distance(ref["mu"], ref["sigma"], mu, sigma, ref["root"])
    return {"fid": fid, "n": len(features),
            "is_mean": is_mean, "is_std": is_std, "precision": precision, "recall": recall}


def table(columns: dict, paper: dict, smoke: bool) -> str:
    names = list(columns)
    header = "| | " + " | ".join(("N(0,I)" if c == "normal" else c.upper() if len(c) <= 3
                                  else c.capitalize()) for c in names) + " |"
    rows = [header, "|---" * (len(names) + 1) + "|"]
    cell = lambda value, fmt: "-" if value is None else format(value, fmt)  # noqa: E731
    rows.append("| FID | " + " | ".join(cell(columns[c]["fid"], ".2f") for c in names) + " |")
    if paper:
        rows.append("| paper FID | " + " | ".join(cell(paper.get(c), ".2f") for c in names) + " |")
    rows.append("| IS | " + " | ".join(f"{columns[c]['is_mean']:.2f} ± {columns[c]['is_std']:.2f}"
                                       for c in names) + " |")
    for key in ("precision", "recall"):
        rows.append(f"| {key} | " + " | ".join(cell(columns[c][key], ".3f") for c in names) + " |")
    if smoke:
        rows.append("\nfewer than 2048 samples: biased figures, for smoke tests only")
    return "\n".join(rows)


def evaluate(args: Args):
    method = common.method_of(args.run)
    name = method.__name__
    device = common.pick_device(args.device)
    run = method.load_run(args.run, device)
    samplers = args.samplers or list(run.samplers)
    unknown = sorted(set(samplers) - set(run.samplers))
    if unknown:
        raise common.UserError(f"the run has no sampler {', '.join(unknown)}; it offers "
                               f"{', '.join(run.samplers) or 'none (training did not finish)'}")
    data_root = args.data_root or run.args["data_root"]
    net = common.Inception().to(device)
    ref = reference(net, run.args, data_root, args.ref, args.num_samples, args.batch_size)
    ref["root"] = common.psd_sqrt(ref["sigma"])  # once for every column
    n, steps = args.num_samples, len(chunks(args.num_samples, args.batch_size))
    columns = {}
    encoder = hasattr(method, "encode")
    if encoder:
        test = common.load_images(run.args["dataset"], data_root, "test", run.args["image_size"],
                                  run.args["crop"])[:n].to(device)
        columns["rec"] = score(net, reconstructed(method, run, test, args.batch_size),
                               math.ceil(len(test) / args.batch_size), ref, "REC")
    for sampler in samplers:
        save_dir = Path(args.save_samples) / sampler if args.save_samples else None
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
        columns[sampler] = score(net, generated(method, run, sampler, n, args, save_dir), steps,
                                 ref, sampler)
    if encoder:
        columns["interp"] = score(net, interpolated(method, run, test, n, args), steps, ref,
                                  "Interp")
    paper = method.paper_fid(run.args, args.ref) if hasattr(method, "paper_fid") else {}
    smoke = min(c["n"] for c in columns.values()) < 2048 or len(ref["features"]) < 2048
    metrics = {"method": name, "ref": args.ref, "num_samples": n, "smoke_test": smoke,
               "columns": columns, "paper_fid": paper}
    (Path(args.run) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"{name} run {args.run}: FID against the {args.ref} split "
          f"({len(ref['features'])} images), {n} samples per column\n")
    print(table(columns, paper, smoke))
    return metrics


# ----------------------------------------------------------------------------------------
# --fid DIR_A DIR_B: a drop-in cross-check of pytorch-fid's command line
# ----------------------------------------------------------------------------------------


def folder_stats(net, path: str, batch_size: int):
    if path.endswith(".npz"):
        with np.load(path) as stored:
            return torch.from_numpy(stored["mu"]), torch.from_numpy(stored["sigma"])
    from PIL import Image

    files = common._image_files(Path(path))

    def batches():
        for start in range(0, len(files), batch_size):
            images = []
            for file in files[start:start + batch_size]:
                with Image.open(file) as image:
                    images.append(torch.from_numpy(np.array(image.convert("RGB"))))
            if len({tuple(i.shape) for i in images}) > 1:
                raise common.UserError(f"the images in {path} differ in size; resize them first")
            yield torch.stack(images).permute(0, 3, 1, 2).float() / 255

    features, _ = common.inception_outputs(net, batches(), math.ceil(len(files) / batch_size),
                                           Path(path).name)
    return common.gaussian_stats(features)


def main(args: Args, given: set):
    if args.fid:
        if len(args.fid) != 2:
            raise common.UserError(f"--fid takes two folders or .npz files, not {len(args.fid)}")
        net = common.Inception().to(common.pick_device(args.device))
        stats = [folder_stats(net, path, args.batch_size) for path in args.fid]
        stats = [[t.cpu() for t in pair] for pair in stats]  # a .npz file's are on the CPU
        print(f"FID: {common.frechet_distance(*stats[0], *stats[1]):.4f}")
    elif args.run:
        evaluate(args)
    else:
        raise common.UserError("give a run folder (python eval.py RUN_DIR) or --fid A B")


if __name__ == "__main__":
    common.cli(main, Args, __doc__)
