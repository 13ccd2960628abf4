"""Evaluate runs: FID, KID, IS and precision / recall of every sampler, as one table.

    python eval.py RUN_DIR                       # 10,000 samples per sampler, test reference
    python eval.py runs/dae-* runs/rae-* --json table.json     # one table for many runs
    python eval.py RUN_DIR --ref train --num-samples 50000 --save-samples samples/
    python eval.py RUN_DIR --parzen              # Parzen log-likelihood (Yoo et al., Table 2)
                                                 #   and every sampler's NLL of the test codes
    python eval.py --fid DIR_A DIR_B             # FID of two image folders (or .npz stats)

One protocol for every method, so that the columns of the papers' tables can be compared:
  - Generation: for each sampler the run offers (N(0, I), MVG, GMM and the method's own),
    --num-samples images drawn in one call from --seed and decoded on the device (so they
    do not depend on --batch-size); for methods with an encoder also
    REC (reconstructions of test images) and Interp (decoded midpoints of the codes of random
    test pairs). Each image is quantised to 8 bits, as a PNG would be. A paper's REC or
    Interp is printed beside ours only where it, too, is of test images: Daly et al.'s Test
    R and Ghose et al.'s Reconstruction are; the RAE paper's REC and Interp are of its
    validation images, mostly training images (rae.py), and are not printed.
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
  - KID as torch-fidelity: unbiased MMD^2 with the cubic polynomial kernel on the pool3
    features, mean and std over 100 random subsets of 1,000 (fewer when there are fewer),
    shown x 1000. Unbiased, so it stays meaningful for small smoke-test runs.
  - IS over 10 splits in order (mean and std); improved precision / recall with k = 3.
  - A run's figures are kept in its metrics.json with what they were computed from (the
    checkpoint's hash, the reference statistics' name, which holds the data's and the
    weights' hashes, samples, seed, KID subsets); a later call with the same request reads
    them instead of computing again, and any change computes afresh.
  - --parzen: Yoo et al.'s Table 2 (after Goodfellow et al.): a Gaussian kernel density on
    --parzen-samples generated images, its width chosen from 0.10, 0.11, .., 0.29 (the
    official MNIST grid) on held-out training images (the run's --holdout; where it has none,
    the last tenth of training, at most 10,000, which the model has seen), mean
    log-likelihood of the test images (at most 10,000) +- standard error; MNIST's border
    padding is cut off first, as the paper's images are 28x28. For runs with an encoder also
    each sampler's mean negative log-likelihood of those test images' codes, nats per code.
Figures from fewer than 2048 samples (the feature dimension) are biased and the table marks
them as smoke tests. None of the papers ships its evaluation code; the reference
implementations used TensorFlow's Inception, whose resize differs slightly from this one.

Each method file exposes the functions this file calls: load_run(run_dir, device) ->
common.Run, sample(run, n, sampler, seed), and where it has an encoder, encode(run, x) and
decode(run, z); paper_fid(args, ref) gives the paper's figures to print beside ours,
paper_parzen(args, samples) the Parzen one.
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
    runs: list[str] = arg([], "run folders to evaluate, one table for all (runs/* works)",
                          positional=True)
    num_samples: int = arg(10000, "generated images per sampler (and REC / Interp)", low=2)
    ref: str = arg("test", "reference split for FID, KID and precision / recall",
                   choices=("test", "train"))
    samplers: list[str] = arg([], "samplers to evaluate; [] means all the run offers")
    data_root: str = arg("", "data folder of the reference images; empty: the run's own")
    batch_size: int = arg(250, "images per generation / Inception batch", low=1)
    device: str = arg("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    seed: int = arg(0, "seed of the samples, the test pairs and the KID subsets")
    kid_subsets: int = arg(100, "KID: random subsets averaged", low=1)
    kid_subset_size: int = arg(1000, "KID: images per subset (fewer if fewer)", low=2)
    save_samples: str = arg("", "also write the generated images as PNG files here")
    json: str = arg("", "also write the table, every run and column, to this JSON file")
    parzen: bool = arg(False, "the Parzen-window log-likelihood of the test images instead")
    parzen_samples: int = arg(10000, "--parzen: generated images in the kernel density", low=1)
    fid: list[str] = arg([], "two image folders or .npz files: print their FID and stop")


# -- Reference statistics: one cached .npz per (data set, split, size, n) ----------------
def reference(net, run_args: dict, data_root: str, split: str, n: int, batch_size: int):
    """Features, mean and covariance of n reference images (a seeded random subset when
    the split holds more), cached next to the data under a name that holds a hash of the
    images, of the Inception weights and the feature protocol: a cache made with other
    weights or other data is never read."""
    dataset, size, crop = run_args["dataset"], run_args["image_size"], run_args["crop"]
    images = common.load_images(dataset, data_root, split, size, crop)
    # n of them, a seeded random choice (all of them, in a seeded order, when there are fewer)
    images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n]]
    data_digest = hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]
    cache = (Path(data_root or ".") / "fid-stats" /
             f"{dataset}-{split}-n{len(images)}-data{data_digest}-"
             f"inception{net.weights_digest}-{common.FEATURE_PROTOCOL}.npz")
    device = net.fc_weight.device
    if cache.exists():
        with np.load(cache) as stored:
            return {"name": cache.name, **{k: torch.from_numpy(stored[k]).to(device)
                                           for k in ("features", "mu", "sigma")}}
    features, _ = common.inception_outputs(
        net, (x.float() / 255 for x in images.split(batch_size)),
        total=math.ceil(len(images) / batch_size), desc=f"reference {split}")
    mu, sigma = common.gaussian_stats(features)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, mu=mu.cpu().numpy(), sigma=sigma.cpu().numpy(),
             features=features.float().cpu().numpy())
    return {"name": cache.name, "features": features, "mu": mu, "sigma": sigma}


# -- Image sources: samplers, reconstructions, interpolations (all in batches, [0, 1]) ---
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


# -- The table ---------------------------------------------------------------------------
def score(net, batches, ref: dict, args: Args, desc: str = "", total: int = 0) -> dict:
    features, logits = common.inception_outputs(net, batches, total=total, desc=desc)
    mu, sigma = common.gaussian_stats(features)
    is_mean, is_std = common.inception_score(logits)
    precision, recall = common.precision_recall(ref["features"], features)
    kid_mean, kid_std = common.kernel_inception_distance(
        ref["features"], features, args.kid_subsets, args.kid_subset_size, args.seed)
    fid = common.frechet_distance(ref["mu"], ref["sigma"], mu, sigma, ref["root"])
    return {"fid": fid, "n": len(features), "kid_mean": kid_mean, "kid_std": kid_std,
            "is_mean": is_mean, "is_std": is_std, "precision": precision, "recall": recall}


def smoke_test(columns: dict, ref: dict) -> bool:
    """Fewer generated or reference images than the feature dimension (2048): singular
    covariances, biased FID and precision / recall; fine for a smoke test only."""
    fewest = min(len(ref["features"]), *(c["n"] for c in columns.values()))
    return fewest < ref["features"].shape[1]


def evaluate(run_dir: str, args: Args, net=None) -> dict:
    """Every column of one run (REC, each sampler, Interp), as written to its metrics.json;
    read from there when that was computed for the same request."""
    method, device = common.method_of(run_dir), common.pick_device(args.device)
    run = method.load_run(run_dir, device)
    samplers = args.samplers or list(run.samplers)
    unknown = sorted(set(samplers) - set(run.samplers))
    if unknown:
        raise common.UserError(f"{run_dir} has no sampler {', '.join(unknown)}; it offers "
                               f"{', '.join(run.samplers) or 'none (training did not finish)'}")
    data_root = args.data_root or run.args["data_root"]
    net = net or common.Inception().to(device)
    ref = reference(net, run.args, data_root, args.ref, args.num_samples, args.batch_size)
    n, encoder = args.num_samples, hasattr(method, "encode")
    request = {"checkpoint": common.file_digest(Path(run_dir) / common.CHECKPOINT),
               "reference": ref["name"], "num_samples": n, "seed": args.seed,
               "kid": [args.kid_subsets, args.kid_subset_size]}
    wanted = (["rec"] if encoder else []) + samplers + (["interp"] if encoder else [])
    stored = Path(run_dir) / "metrics.json"
    if stored.is_file():
        old = json.loads(stored.read_text())
        if old.get("request") == request and set(wanted) <= set(old["columns"]):
            print(f"{run_dir}: figures read from its metrics.json (same request)")
            return {**old, "columns": {c: old["columns"][c] for c in wanted}}
    ref["root"] = common.psd_sqrt(ref["sigma"])  # once for every column
    columns = {}
    if encoder:
        test = common.load_images(run.args["dataset"], data_root, "test", run.args["image_size"],
                                  run.args["crop"])[:n].to(device)
        columns["rec"] = score(net, reconstructed(method, run, test, args.batch_size), ref, args,
                               desc="REC", total=math.ceil(len(test) / args.batch_size))
    for sampler in samplers:
        save_dir = Path(args.save_samples) / sampler if args.save_samples else None
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
        columns[sampler] = score(net, generated(method, run, sampler, n, args, save_dir), ref,
                                 args, desc=sampler, total=math.ceil(n / args.batch_size))
    if encoder:
        columns["interp"] = score(net, interpolated(method, run, test, n, args), ref, args,
                                  desc="Interp", total=math.ceil(n / args.batch_size))
    paper = method.paper_fid(run.args, args.ref) if hasattr(method, "paper_fid") else {}
    smoke = smoke_test(columns, ref)
    metrics = {"method": method.__name__, "ref": args.ref, "num_samples": n, "smoke_test": smoke,
               "reference_images": len(ref["features"]), "columns": columns,
               "paper_fid": paper, "request": request, "provenance": common.provenance(device)}
    stored.write_text(json.dumps(metrics, indent=2))
    return metrics


# ----------------------------------------------------------------------------------------
# Parzen-window log-likelihood (Yoo et al.'s Table 2)
# ----------------------------------------------------------------------------------------

PARZEN_SIGMAS = torch.arange(10, 30) / 100  # 0.10, 0.11, .., 0.29: the official MNIST grid


def parzen_log_likelihood(samples, points, sigmas, batch_size: int = 200) -> torch.Tensor:
    """log p(x) under the Gaussian kernel density on samples [S, D], for each width sigma:
    log p(x) = logsumexp_s(-||x - s||^2 / (2 sigma^2)) - log S - (D/2) log(2 pi sigma^2).
    points [N, D] -> [len(sigmas), N], float64."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)  # [W]
    n, dim = samples.shape
    rows = []
    for x in points.split(batch_size):
        dist2 = torch.cdist(x.double(), samples.double()) ** 2  # [b, S]
        rows.append(torch.logsumexp(-dist2 / (2 * sigmas[:, None, None] ** 2), dim=2)
                    - math.log(n) - dim / 2 * torch.log(2 * math.pi * sigmas[:, None] ** 2))
    return torch.cat(rows, dim=1)  # [W, N]


def parzen_validation(train_images: torch.Tensor, holdout: int) -> torch.Tensor:
    """Where the width is chosen: the run's held-out training images, or, where it held
    none out, the last tenth of its training images (at most 10,000), which it has seen."""
    if holdout:
        return train_images[len(train_images) - holdout:]
    return train_images[len(train_images) - min(10000, len(train_images) // 10):]


def parzen_points(images: torch.Tensor, dataset: str) -> torch.Tensor:
    """Images [N, C, S, S] in [0, 1] -> points [N, D]; MNIST's zero border (2 pixels, added
    to make 32x32) cut off again, as the paper's images are 28x28."""
    cut = 2 if dataset == "mnist" else 0
    return images[..., cut:-cut or None, cut:-cut or None].flatten(1).cpu()  # [N, C S' S']


def parzen(run_dir: str, args: Args) -> dict:
    """The Parzen protocol for every sampler of a run: width by validation, test mean +- s.e.;
    with an encoder also each sampler's own NLL of the test images' codes."""
    method, device = common.method_of(run_dir), common.pick_device(args.device)
    run = method.load_run(run_dir, device)
    a, root = run.args, args.data_root or run.args["data_root"]
    load = lambda split: common.load_images(a["dataset"], root, split, a["image_size"],  # noqa
                                            a["crop"])  # uint8
    train, test = load("train"), load("test")[:10000]
    valid = parzen_points(parzen_validation(train, a.get("holdout", 0)) / 255, a["dataset"])
    codes = (common.encode_all(lambda x: method.encode(run, x), test.to(device))  # [N, d]
             if hasattr(method, "encode") else None)
    test = parzen_points(test / 255, a["dataset"])
    columns, n = {}, args.parzen_samples
    for name in args.samplers or run.samplers:
        samples = parzen_points(method.sample(run, n, name, args.seed), a["dataset"])  # [n, D]
        best = parzen_log_likelihood(samples, valid, PARZEN_SIGMAS).mean(1).argmax()
        (ll,) = parzen_log_likelihood(samples, test, PARZEN_SIGMAS[best, None])  # [N]
        columns[name] = {"log_likelihood": ll.mean().item(), "sigma": PARZEN_SIGMAS[best].item(),
                         "standard_error": (ll.std() / math.sqrt(len(ll))).item()}
        if codes is not None:  # nats per code, the density this sampler draws codes from
            columns[name]["code_nll"] = -run.samplers[name].log_prob(codes).mean().item()
    paper = method.paper_parzen(a, n) if hasattr(method, "paper_parzen") else ""
    common.log_epoch(Path(run_dir), {"parzen": columns, "samples": n})
    return {"method": method.__name__, "columns": columns, "paper": paper}


# -- The table: a row per run and column -------------------------------------------------
def cell(value, fmt: str, spread=None) -> str:
    if value is None:
        return "-"
    return format(value, fmt) + ("" if spread is None else " ± " + format(spread, fmt))


def label(column: str) -> str:
    return "N(0,I)" if column == "normal" else column.upper() if len(column) <= 3 else \
        column.capitalize()


def table(results: dict) -> str:
    """Markdown: one row per (run, column); the paper's FID where the run's setting is the
    paper's, '-' elsewhere."""
    rows = ["| run | method | column | FID | paper FID | KID x 10^3 | IS | precision | recall |",
            "|---" * 9 + "|"]
    for run_dir, m in results.items():
        for column, c in m["columns"].items():
            kid = [None if v is None else 1000 * v for v in (c["kid_mean"], c["kid_std"])]
            rows.append(f"| {Path(run_dir).name} | {m['method']} | {label(column)} | "
                        f"{cell(c['fid'], '.2f')} | {cell(m['paper_fid'].get(column), '.2f')} | "
                        f"{cell(kid[0], '.2f', kid[1])} | {cell(c['is_mean'], '.2f', c['is_std'])}"
                        f" | {cell(c['precision'], '.3f')} | {cell(c['recall'], '.3f')} |")
    if any(m["smoke_test"] for m in results.values()):
        rows.append("\nfewer than 2048 samples or reference images in some rows: biased FID "
                    "and precision / recall, for smoke tests only (KID is unbiased)")
    return "\n".join(rows)


def parzen_table(results: dict) -> str:
    rows = ["| run | method | sampler | log-likelihood (nats) | sigma | paper | test-code NLL |",
            "|---" * 7 + "|"]
    for run_dir, m in results.items():
        for name, c in m["columns"].items():
            paper = m["paper"] if name == "lde" else ""
            rows.append(f"| {Path(run_dir).name} | {m['method']} | {label(name)} | "
                        f"{c['log_likelihood']:.1f} ± {c['standard_error']:.1f} | "
                        f"{c['sigma']:.2f} | {paper or '-'} | {cell(c.get('code_nll'), '.2f')} |")
    return "\n".join(rows)


# -- --fid DIR_A DIR_B: a drop-in cross-check of pytorch-fid's command line --------------
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

    features, _ = common.inception_outputs(net, batches(), desc=Path(path).name,
                                           total=math.ceil(len(files) / batch_size))
    return common.gaussian_stats(features)


def main(args: Args, given: set):
    if args.fid:
        if len(args.fid) != 2:
            raise common.UserError(f"--fid takes two folders or .npz files, not {len(args.fid)}")
        net = common.Inception().to(common.pick_device(args.device))
        stats = [folder_stats(net, path, args.batch_size) for path in args.fid]
        stats = [[t.cpu() for t in pair] for pair in stats]  # a .npz file's are on the CPU
        print(f"FID: {common.frechet_distance(*stats[0], *stats[1]):.4f}")
        return None
    if not args.runs:
        raise common.UserError("give run folders (python eval.py RUN_DIR ...) or --fid A B")
    if args.parzen:
        results = {run: parzen(run, args) for run in args.runs}
        print(parzen_table(results))
    else:
        net = common.Inception().to(common.pick_device(args.device))
        results = {run: evaluate(run, args, net) for run in args.runs}
        print(f"FID, KID and precision / recall against the {args.ref} split, "
              f"{args.num_samples} samples per column\n")
        print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    common.cli(main, Args, __doc__)
