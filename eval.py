"""Evaluate runs: FID, KID, IS and precision / recall of every sampler, as one table,
against the whole reference split; precision / recall on Inception pool3 features, not
Kynkaanniemi et al.'s VGG16 ones (the protocol and its departures: after the options).

    python eval.py RUN_DIR                       # 10,000 samples per sampler, test reference
    python eval.py runs/dae-* runs/rae-* --json table.json     # one table for many runs
    python eval.py RUN_DIR --ref train --num-samples 50000 --save-samples samples/
    python eval.py RUN_DIR --parzen              # Parzen log-likelihood (Yoo et al., Table 2)
                                                 #   and every sampler's NLL of the test codes
    python eval.py --fid DIR_A DIR_B             # FID of two image folders (or .npz stats)

One protocol for every method, so that the columns of the papers' tables can be compared:
  - Reference: the whole split (--ref test: CIFAR-10's 10,000 test images, as Daly et al. and
    Ghosh et al.; --ref train: the training set, as Maeda's Table 1 also reports), as
    pytorch-fid's statistics of a folder are of all its images; --ref-size N takes a seeded
    random N of them instead. FID moves with the reference's size (one distribution against
    10k and 50k reference images: 39.0 and 21.8), so a paper's figure is printed beside ours
    only when the samples and the reference are the paper's too (PAPER_SAMPLES of the
    method file, the whole split).
  - Generation: for each sampler the run offers (N(0, I), MVG, GMM and the method's own),
    --num-samples images drawn in one call from --seed and decoded on the device (so they
    do not depend on --batch-size); for methods with an encoder also REC (reconstructions of
    the reference images themselves) and Interp (decoded midpoints of the codes of
    --num-samples random pairs of reference images). Each image is quantised to 8 bits, as
    a PNG would be. A paper's REC or Interp is printed beside ours only where it, too, is of
    test images: Daly et al.'s Test R and Ghose et al.'s Reconstruction are; the RAE paper's
    REC and Interp are of its validation images, mostly training images (rae.py), and are
    not printed.
  - Features: pytorch-fid's FID Inception (the 2015-12-05 TF weights), fp32 with TF32 off. FID,
    KID and precision / recall use its pool3 features through pytorch-fid's input path
    (PyTorch's bilinear resize to 299), as Maeda computed FID; IS uses its logits (pool3
    times the fc weight, no bias) through torch-fidelity's input path (8-bit values,
    TensorFlow 1's bilinear resize, (x - 128) / 128), as Maeda computed IS.
  - FID against the reference's statistics, computed with symmetric eigendecompositions in
    float64. Reference statistics are cached as DATA_ROOT/fid-stats/*.npz holding `mu` and
    `sigma` (pytorch-fid's format; check them with `python -m pytorch_fid FILE.npz OTHER`)
    and the features; the file name holds hashes of the reference images and of the
    Inception weights file, so statistics made with other weights (the tests' random ones,
    say) or other data are never read; an unreadable file is computed again. FID is biased
    at every sample size (it falls as n grows); below 2048 samples (the feature dimension)
    the covariance is singular, and the table marks such rows as smoke tests.
  - KID as torch-fidelity: unbiased MMD^2 with the cubic polynomial kernel on the pool3
    features, mean and std over 100 random subsets of 1,000 (fewer when there are fewer; no
    std where a subset is all of both sets), drawn as torch-fidelity draws them (numpy,
    seed 2020), shown x 1000. Unbiased, so it stays meaningful for small smoke-test runs.
  - IS as torch-fidelity: 10 splits of the logits after its seeded shuffle (images in data-set
    order would give splits of one class), split i the rows i N // 10 to (i + 1) N // 10.
  - Precision / recall (Kynkaanniemi et al., k = 3) on the Inception pool3 features, on sets
    of equal size (the larger cut to a seeded random subset). Kynkaanniemi et al. and
    torch-fidelity use VGG16 fc2 features of 224-pixel images: the table's columns say
    "pool3", and their figures are not those papers' (nor the RAE paper's PRD curves).
  - A run's figures are kept in its metrics.json with what they were computed from (the
    checkpoint's hash, the reference statistics' name, which holds the data's and the
    weights' hashes, samples, seed, KID subsets, and a hash of the metric code itself); a
    later call with the same request reads them instead of computing again, and any change,
    a corrected metric included, computes afresh.
  - --parzen: Yoo et al.'s Table 2 (after Goodfellow et al.): a Gaussian kernel density on
    --parzen-samples generated images, its width chosen from 0.10, 0.11, .., 0.29 (the
    official MNIST grid; where the best is at its edge, the grid goes on past it in steps of
    0.01 until the best lies inside, and the table says "widened") on images the run
    never trained on: those it held out where it has them (the IAE's --holdout images on
    MNIST, the RAE's validation images), else a seeded random half of the test images, the
    other half then scored. Mean log-likelihood of the test images (at most 10,000) +-
    standard error; MNIST's border padding is cut off first, as the paper's images are
    28x28. For runs with an encoder also each sampler's mean negative log-likelihood of
    the scored test images' codes, nats per code.
The papers' own evaluation code: the RAE repository ships its TensorFlow FID and PRD code,
the IAE repository its Parzen scripts, and Maeda names his tools (pytorch-fid for FID,
torch-fidelity for IS), whose input paths are the ones above; Daly et al. and Ghose et al.
computed FID with TensorFlow's Inception, whose resize differs slightly from pytorch-fid's.

Each method file exposes the functions this file calls: load_run(run_dir, device) ->
common.Run, sample(run, n, sampler, seed), and where it has an encoder, encode(run, x) and
decode(run, z); paper_fid(args, ref) gives the paper's figures to print beside ours (for
PAPER_SAMPLES samples), paper_parzen(args, samples) the Parzen one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
import zipfile
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
    num_samples: int = arg(10000, "generated images per sampler (and Interp pairs)", low=2)
    ref: str = arg("test", "reference split for FID, KID and precision / recall",
                   choices=("test", "train"))
    ref_size: int = arg(0, "reference images: 0, the whole split; N, a seeded random N of it",
                        low=0)
    samplers: list[str] = arg([], "samplers to evaluate; [] means all the run offers")
    data_root: str = arg("", "data folder of the reference images; empty: the run's own")
    batch_size: int = arg(250, "images per generation / Inception batch", low=1)
    device: str = arg("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    seed: int = arg(0, "seed of the samples and of the Interp pairs")
    kid_subsets: int = arg(100, "KID: random subsets averaged", low=1)
    kid_subset_size: int = arg(1000, "KID: images per subset (fewer if fewer)", low=2)
    save_samples: str = arg("", "also write the generated images as PNG files here")
    json: str = arg("", "also write the table, every run and column, to this JSON file")
    parzen: bool = arg(False, "the Parzen-window log-likelihood of the test images instead")
    parzen_samples: int = arg(10000, "--parzen: generated images in the kernel density", low=1)
    fid: list[str] = arg([], "two image folders or .npz files: print their FID and stop")


def write_atomically(path: Path, write):
    """write(file) into a temporary file beside `path`, then renamed: a kill mid-write, or
    two evaluations at once, never leave a half file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# -- Reference statistics: one cached .npz per (data set, split, images, weights) --------
def reference(net, run_args: dict, data_root: str, split: str, size: int, batch_size: int):
    """The reference images (uint8, CPU: the whole split, or a seeded random `size` of it)
    with their features, mean and covariance, cached next to the data under a name that
    holds a hash of the images, of the Inception weights and the feature protocol: a cache
    made with other weights or other data is never read."""
    images = common.run_images(run_args, split, data_root)
    whole = not size or size >= len(images)
    if not whole:
        images = images[torch.randperm(len(images),
                                       generator=torch.Generator().manual_seed(0))[:size]]
    data_digest = hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]
    cache = (Path(data_root or ".") / "fid-stats" /
             f"{run_args['dataset']}-{split}-n{len(images)}-data{data_digest}-"
             f"inception{net.weights_digest}-{common.FEATURE_PROTOCOL}.npz")
    device = net.fc_weight.device
    ref = {"name": cache.name, "images": images, "whole": whole}
    try:
        with np.load(cache) as stored:
            return {**ref, **{k: torch.from_numpy(stored[k]).to(device)
                              for k in ("features", "mu", "sigma")}}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent, or cut
        pass
    features, _ = common.inception_outputs(
        net, (x.float() / 255 for x in images.split(batch_size)),
        total=math.ceil(len(images) / batch_size), desc=f"reference {split}", logits=False)
    mu, sigma = common.gaussian_stats(features)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(cache, lambda f: np.savez(f, mu=mu.cpu().numpy(), sigma=sigma.cpu().numpy(),
                                               features=features.float().cpu().numpy()))
    return {**ref, "features": features, "mu": mu, "sigma": sigma}


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


def reconstructed(method, run, images: torch.Tensor, batch_size: int):
    """D(E(x)) of every image (uint8 [N, C, H, W]), in batches."""
    for x in images.split(batch_size):
        yield method.decode(run, method.encode(run, x.float() / 255))


def interpolated(method, run, images: torch.Tensor, n: int, args: Args):
    """Decoded midpoints of the codes of n random pairs of the images (uint8)."""
    g = torch.Generator().manual_seed(args.seed)
    pairs = torch.randint(len(images), (n, 2), generator=g)
    for index in pairs.split(args.batch_size):
        codes = method.encode(run, images[index.flatten()].float() / 255)  # [2B, d]
        yield method.decode(run, (codes[0::2] + codes[1::2]) / 2)


# -- The table ---------------------------------------------------------------------------
def score(net, batches, ref: dict, args: Args, desc: str = "", total: int = 0) -> dict:
    """Every metric of one column: its images' pool3 features against the reference's (FID,
    KID, precision / recall, in that order: reference first), IS of its logits."""
    features, logits = common.inception_outputs(net, batches, total=total, desc=desc)
    mu, sigma = common.gaussian_stats(features)
    is_mean, is_std = common.inception_score(logits)
    precision, recall = common.precision_recall(ref["features"], features)
    kid_mean, kid_std = common.kernel_inception_distance(
        ref["features"], features, args.kid_subsets, args.kid_subset_size)
    fid = common.frechet_distance(ref["mu"], ref["sigma"], mu, sigma, ref["root"])
    return {"fid": fid, "n": len(features), "kid_mean": kid_mean, "kid_std": kid_std,
            "is_mean": is_mean, "is_std": is_std, "precision": precision, "recall": recall}


def smoke_test(columns: dict, ref: dict) -> bool:
    """Fewer generated or reference images than the feature dimension (2048): singular
    covariances; fine for a smoke test only."""
    fewest = min(len(ref["features"]), *(c["n"] for c in columns.values()))
    return fewest < ref["features"].shape[1]


def metric_code() -> str:
    """A hash of the code every figure comes from: a corrected metric never reads old ones."""
    parts = (common.Inception, common.tf1_bilinear, common.inception_outputs,
             common.gaussian_stats, common.psd_sqrt, common.frechet_distance,
             common.fidelity_rng, common.inception_score, common.precision_recall,
             common.kernel_inception_distance, reference, generated, reconstructed,
             interpolated, score)
    text = "".join(inspect.getsource(p) for p in parts) + common.FEATURE_PROTOCOL
    return hashlib.sha256(text.encode()).hexdigest()[:16]


METRIC_CODE = metric_code()  # part of every stored figure's request


def loaded(method, run_dir: str, device) -> common.Run:
    """The run as its method file loads it, with any sampler that another file added
    (iae_lde.py's LDE, by --fit-lde) rebuilt by that file, which its stored state names."""
    run = method.load_run(run_dir, device)
    return run._replace(samplers={
        k: common.method_module(v["module"]).sampler_from_state(v) if isinstance(v, dict) else v
        for k, v in run.samplers.items()})


def read_json(path: Path):
    """A JSON file's content, or None where it is missing or unreadable (a half write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def evaluate(run_dir: str, args: Args, net=None) -> dict:
    """Every column of one run (REC, each sampler, Interp), as written to its metrics.json;
    read from there when that was computed for the same request."""
    method, device = common.method_of(run_dir), common.pick_device(args.device)
    run = loaded(method, run_dir, device)
    samplers = args.samplers or list(run.samplers)
    unknown = sorted(set(samplers) - set(run.samplers))
    if unknown:
        raise common.UserError(f"{run_dir} has no sampler {', '.join(unknown)}; it offers "
                               f"{', '.join(run.samplers) or 'none (training did not finish)'}")
    data_root = args.data_root or run.args["data_root"]
    net = net or common.Inception().to(device)
    ref = reference(net, run.args, data_root, args.ref, args.ref_size, args.batch_size)
    n, encoder = args.num_samples, hasattr(method, "encode")
    request = {"checkpoint": common.file_digest(Path(run_dir) / common.CHECKPOINT),
               "reference": ref["name"], "num_samples": n, "seed": args.seed,
               "kid": [args.kid_subsets, args.kid_subset_size], "code": METRIC_CODE}
    wanted = (["rec"] if encoder else []) + samplers + (["interp"] if encoder else [])
    stored = Path(run_dir) / "metrics.json"
    old = read_json(stored) or {}
    if old.get("request") == request and set(wanted) <= set(old.get("columns", {})):
        print(f"{run_dir}: figures read from its metrics.json (same request)")
        return {**old, "columns": {c: old["columns"][c] for c in wanted},
                "paper_fid": paper_figures(method, run.args, args, ref)}
    ref["root"] = common.psd_sqrt(ref["sigma"])  # once for every column
    columns = {}
    if encoder:  # the reference images themselves, reconstructed
        columns["rec"] = score(net, reconstructed(method, run, ref["images"].to(device),
                                                  args.batch_size), ref, args, desc="REC",
                               total=math.ceil(len(ref["images"]) / args.batch_size))
    for sampler in samplers:
        save_dir = Path(args.save_samples) / sampler if args.save_samples else None
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
        columns[sampler] = score(net, generated(method, run, sampler, n, args, save_dir), ref,
                                 args, desc=sampler, total=math.ceil(n / args.batch_size))
    if encoder:
        columns["interp"] = score(net, interpolated(method, run, ref["images"].to(device), n,
                                                    args), ref, args, desc="Interp",
                                  total=math.ceil(n / args.batch_size))
    metrics = {"method": method.__name__, "ref": args.ref, "num_samples": n,
               "smoke_test": smoke_test(columns, ref), "reference_images": len(ref["features"]),
               "columns": columns, "request": request, "provenance": common.provenance(device)}
    write_atomically(stored, lambda f: f.write(json.dumps(metrics, indent=2).encode()))
    return {**metrics, "paper_fid": paper_figures(method, run.args, args, ref)}


def paper_figures(method, run_args: dict, args: Args, ref: dict) -> dict:
    """The paper's figures for this run (the method file's paper_fid: only for the paper's
    setting), only when the samples and the reference are the paper's as well; never
    stored, so that a corrected figure is printed at once."""
    protocol = args.num_samples == getattr(method, "PAPER_SAMPLES", None) and ref["whole"]
    return method.paper_fid(run_args, args.ref) if protocol and hasattr(method, "paper_fid") \
        else {}


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


def parzen_split(test: torch.Tensor, held: torch.Tensor | None, seed: int):
    """(images that choose the width, images scored, where the width was chosen): the images
    the run held out from training, where it has them, and the test images (at most
    10,000); otherwise a seeded random half of the test images and the other half, so that
    the width is never chosen on images the model trained on."""
    if held is not None and len(held):
        return held, test[:10000], "held-out training images"
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    half = min(len(test) // 2, 10000)
    return (test[order[half:2 * half]], test[order[:half]],
            "a random half of the test images (the other half scored)")


def parzen_width(samples: torch.Tensor, valid: torch.Tensor) -> tuple[float, bool]:
    """The width of PARZEN_SIGMAS with the highest mean log-likelihood of `valid`; where that
    is the grid's first or last, the grid goes on past that edge by 0.01, ten widths at a
    time, until the best lies inside it. Returns (width, whether the grid was widened)."""
    sigmas = [round(s, 2) for s in PARZEN_SIGMAS.tolist()]
    scores = parzen_log_likelihood(samples, valid, sigmas).mean(1).tolist()
    best = max(range(len(sigmas)), key=scores.__getitem__)
    widened = False
    while best in (0, len(sigmas) - 1):
        step = -0.01 if best == 0 else 0.01
        more = [w for w in (round(sigmas[best] + step * k, 2) for k in range(1, 11)) if w > 0]
        if not more:  # 0.01, the narrowest
            break
        found = parzen_log_likelihood(samples, valid, more).mean(1).tolist()
        if step < 0:
            sigmas, scores = more[::-1] + sigmas, found[::-1] + scores
        else:
            sigmas, scores = sigmas + more, scores + found
        best, widened = max(range(len(sigmas)), key=scores.__getitem__), True
    return sigmas[best], widened


def parzen_points(images: torch.Tensor, dataset: str) -> torch.Tensor:
    """Images [N, C, S, S] in [0, 1] -> points [N, D]; MNIST's zero border (2 pixels, added
    to make 32x32) cut off again, as the paper's images are 28x28."""
    cut = 2 if dataset == "mnist" else 0
    return images[..., cut:-cut or None, cut:-cut or None].flatten(1).cpu()  # [N, C S' S']


def parzen(run_dir: str, args: Args) -> dict:
    """The Parzen protocol for every sampler of a run: width by validation on images the run
    never trained on, mean +- s.e. on the test images scored; with an encoder also each
    sampler's own NLL of those images' codes."""
    method, device = common.method_of(run_dir), common.pick_device(args.device)
    run = loaded(method, run_dir, device)
    a, root = run.args, args.data_root or run.args["data_root"]
    held = method.data_splits(a, root)[1] if hasattr(method, "data_splits") else None
    valid, test, chosen_on = parzen_split(common.run_images(a, "test", root), held, args.seed)
    codes = (common.encode_all(lambda x: method.encode(run, x), test.to(device))  # [N, d]
             if hasattr(method, "encode") else None)
    valid, test = (parzen_points(x / 255, a["dataset"]) for x in (valid, test))
    columns, n = {}, args.parzen_samples
    for name in args.samplers or run.samplers:
        samples = parzen_points(method.sample(run, n, name, args.seed), a["dataset"])  # [n, D]
        sigma, widened = parzen_width(samples, valid)
        (ll,) = parzen_log_likelihood(samples, test, [sigma])  # [N]
        columns[name] = {"log_likelihood": ll.mean().item(), "sigma": sigma, "widened": widened,
                         "standard_error": (ll.std() / math.sqrt(len(ll))).item()}
        if codes is not None:  # nats per code, the density this sampler draws codes from
            columns[name]["code_nll"] = -run.samplers[name].log_prob(codes).mean().item()
    paper = method.paper_parzen(a, n) if hasattr(method, "paper_parzen") else ""
    common.log_epoch(Path(run_dir), {"parzen": columns, "samples": n, "width_on": chosen_on})
    return {"method": method.__name__, "columns": columns, "paper": paper,
            "width_on": chosen_on, "scored": len(test)}


# -- The table: a row per run and column -------------------------------------------------
def cell(value, fmt: str, spread=None) -> str:
    if value is None:
        return "-"
    return format(value, fmt) + ("" if spread is None else " ± " + format(spread, fmt))


def label(column: str) -> str:
    return "N(0,I)" if column == "normal" else column.upper() if len(column) <= 3 else \
        column.capitalize()


def table(results: dict) -> str:
    """Markdown: one row per (run, column); the paper's FID where the run's setting and the
    protocol are the paper's, '-' elsewhere."""
    rows = ["| run | method | column | FID | paper FID | KID x 10^3 | IS | precision (pool3) "
            "| recall (pool3) |", "|---" * 9 + "|"]
    for run_dir, m in results.items():
        for column, c in m["columns"].items():
            kid = [None if v is None else 1000 * v for v in (c["kid_mean"], c["kid_std"])]
            rows.append(f"| {Path(run_dir).name} | {m['method']} | {label(column)} | "
                        f"{cell(c['fid'], '.2f')} | {cell(m['paper_fid'].get(column), '.2f')} | "
                        f"{cell(kid[0], '.2f', kid[1])} | {cell(c['is_mean'], '.2f', c['is_std'])}"
                        f" | {cell(c['precision'], '.3f')} | {cell(c['recall'], '.3f')} |")
    if any(m["smoke_test"] for m in results.values()):
        rows.append("\nfewer than 2048 samples or reference images in some rows: singular "
                    "covariances, for smoke tests only (KID is unbiased)")
    return "\n".join(rows)


def parzen_table(results: dict) -> str:
    rows = ["| run | method | sampler | log-likelihood (nats) | sigma | width chosen on | paper "
            "| test-code NLL |", "|---" * 8 + "|"]
    for run_dir, m in results.items():
        for name, c in m["columns"].items():
            paper = m["paper"] if name == "lde" else ""
            sigma = f"{c['sigma']:.2f}" + (" (grid widened)" if c["widened"] else "")
            rows.append(f"| {Path(run_dir).name} | {m['method']} | {label(name)} | "
                        f"{c['log_likelihood']:.1f} ± {c['standard_error']:.1f} | {sigma} | "
                        f"{m['width_on']} | {paper or '-'} | {cell(c.get('code_nll'), '.2f')} |")
    return "\n".join(rows)


# -- --fid DIR_A DIR_B: a drop-in cross-check of pytorch-fid's command line --------------
FID_SUFFIXES = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp")


def folder_stats(net, path: str, batch_size: int):
    if path.endswith(".npz"):
        with np.load(path) as stored:
            return torch.from_numpy(stored["mu"]), torch.from_numpy(stored["sigma"])
    from PIL import Image

    # pytorch-fid's choice of files: the folder's top level, these suffixes, sorted
    files = sorted(f for suffix in FID_SUFFIXES for f in Path(path).glob(f"*.{suffix}"))
    if not files:
        raise common.UserError(f"{path} holds no images at its top level "
                               f"({', '.join(FID_SUFFIXES)})")

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
                                           total=math.ceil(len(files) / batch_size), logits=False)
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
    runs = [run for run in args.runs if (Path(run) / common.CHECKPOINT).is_file()]
    if not runs:
        common.load_checkpoint(args.runs[0])  # the one-line error of a folder without one
    for run in sorted(set(args.runs) - set(runs)):  # runs/* takes runs that never saved
        print(f"skipping {run}: no {common.CHECKPOINT} (no epoch finished there)")
    args = dataclasses.replace(args, runs=runs)
    for run in runs:  # a run it cannot read is one line before any network is built
        common.method_of(run)
    if args.parzen:
        results = {run: parzen(run, args) for run in args.runs}
        print(parzen_table(results))
    else:
        net = common.Inception().to(common.pick_device(args.device))
        results = {run: evaluate(run, args, net) for run in args.runs}
        ref = {m["reference_images"] for m in results.values()}
        print(f"FID, KID and precision / recall against {' / '.join(map(str, sorted(ref)))} "
              f"images of the {args.ref} split, {args.num_samples} samples per column "
              f"(REC: the reference images)\n")
        print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":  # --help ends with the protocol
    common.cli(main, Args, __doc__, epilog=__doc__[__doc__.index("One protocol"):],
               trains=False)
