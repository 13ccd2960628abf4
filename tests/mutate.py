"""Mutation check (not collected by pytest): do the tests catch a slipped sign, factor or
scope? Run it before you stop:

    python tests/mutate.py                 # every mutation, two at a time
    python tests/mutate.py --list          # what it would try
    python tests/mutate.py --only 3 17     # some of them, by number
    python tests/mutate.py --jobs 1        # one at a time

Each mutation is one small textual change of one file (a flipped sign, a dropped factor, a
swapped split, an off-by-one in a schedule, a widened scope). For each, the tracked tree
(what `git ls-files` lists, plus new files not ignored) is copied into a scratch folder,
the change is applied there (it must match exactly once, or the mutation is reported as
stale), and the test files that guard that code run on the copy with `pytest -x`. A
mutation the tests fail on is caught; one they pass survives. The checkout itself is never
touched. Exits 1 if any mutation survives or is stale.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOBS = 2  # mutations tested at once (--jobs)

# (file, exact text, replacement, test files that must catch it, what the slip is)
MUTATIONS = [
    # common.py, the conditions true only under torchrun (the sweep leaves them out)
    ("common.py", 'if size > 1 and getattr(args, "sync_bn", False)',
     'if size > 2 and getattr(args, "sync_bn", False)',
     ["test_distributed.py::test_sync_bn_on_cpu_is_a_one_line_error"],
     "--sync-bn on the CPU accepted from two processes"),
    ("common.py", 'if size > 1 and getattr(args, "sync_bn", False)',
     'if size >= 1 and getattr(args, "sync_bn", False)',
     ["test_dae.py::test_sync_bn_in_one_process_is_a_no_op_even_on_the_cpu"],
     "--sync-bn refused in a single process"),
    ("common.py", "if world()[1] > 1:  # each process's own random stream",
     "if world()[1] > 2:  # each process's own random stream",
     ["test_distributed.py::test_killed_two_process_run_resumes_as_if_never_interrupted"],
     "two processes' random streams not kept in the checkpoint"),
    ("common.py",
     'torch.distributed.all_gather_object(state["rng_per_process"], rng_state())',
     'state["rng_per_process"] = [rng_state()] * world()[1]',
     ["test_distributed.py::test_each_method_runs_as_two_processes[dae.py-flags0]"],
     "the checkpoint keeps one process's random stream for every process"),
    # dae.py
    ("dae.py", "loss = reconstruction_loss(logits, x)", "loss = -reconstruction_loss(logits, x)",
     ["test_dae.py"], "the training loop ascends the BCE"),
    ("dae.py", "if self.training and self.noise_std:", "if self.noise_std:",
     ["test_dae.py"], "decoder-input noise also at evaluation"),
    ("dae.py", "linear.requires_grad_(False)", "linear.requires_grad_(True)",
     ["test_dae.py"], "--freeze-latent ignored"),
    # vae.py
    ("vae.py", "mu.square() - 1 - 2 * log_sigma", "mu.square() - 1 + 2 * log_sigma",
     ["test_vae.py"], "sign of log sigma^2 in the KL"),
    ("vae.py", "z = mu + log_sigma.exp() * torch.randn_like(mu)",
     "z = mu + log_sigma * torch.randn_like(mu)", ["test_vae.py"],
     "reparameterisation scales by log sigma"),
    ("vae.py", 'terms["loss"] = terms["reconstruction"] + beta * terms["kl"]',
     'terms["loss"] = terms["reconstruction"] + terms["kl"]', ["test_vae.py"],
     "beta dropped from the ELBO"),
    ("vae.py", "return squared.mean(1).flatten(1).sum(1).mean()",
     "return squared.flatten(1).sum(1).mean()", ["test_vae.py"],
     "Gaussian reconstruction sums channels instead of averaging"),
    ("vae.py", "vae_loss(logits, x, mu, log_sigma, args.loss, beta)",
     "vae_loss(logits, x, mu, log_sigma, args.loss, 0.01)", ["test_vae.py"],
     "the training loop ignores --kl-weight"),
    # rae.py
    ("rae.py", "return 0.5 * z.float().square().sum(1).mean()",
     "return z.float().square().sum(1).mean()", ["test_rae.py"], "L_z without its 1/2"),
    ("rae.py", "2 * pixels * beta_code / args.latent_dim", "pixels * beta_code / args.latent_dim",
     ["test_rae.py"], "official beta converted without the factor 2"),
    ("rae.py", 'per_unit = pixels / args.latent_dim if args.variant == "rae-gp" else pixels',
     "per_unit = pixels", ["test_rae.py"], "GP weight not divided by the latent units"),
    ("rae.py", 'include_dense=args.dataset == "celeba"', 'include_dense=args.dataset != "celeba"',
     ["test_rae.py"], "L2 scope of the first Dense swapped between data sets"),
    ("rae.py", 'if args.variant == "rae-gp":', 'if args.variant == "rae-gp " :',
     ["test_rae.py"], "--variant rae-gp trains without its penalty"),
    ("rae.py", "create_graph=True", "create_graph=False", ["test_rae.py"],
     "the gradient penalty is not trained through"),
    ("rae.py", "if self.wait >= self.patience:", "if self.wait > self.patience:",
     ["test_rae.py"], "plateau patience off by one (PyTorch's rule)"),
    ("rae.py", "        epochs = 70\n", "        epochs = 100\n", ["test_rae.py"],
     "CIFAR-10 RAE-GP's figure beside a 100-epoch run"),
    ("rae.py", "if val_loss < self.best - self.min_delta:",
     "if val_loss < self.best * (1 - 1e-4):", ["test_rae.py"],
     "plateau threshold relative, not Keras' absolute min_delta"),
    # eae.py
    ("eae.py", 'terms["reconstruction"] - args.entropy_weight * terms["entropy"]',
     'terms["reconstruction"] + args.entropy_weight * terms["entropy"]', ["test_eae.py"],
     "sign of the entropy term"),
    ("eae.py", "+ d * log_eps.mean()", "+ log_eps.mean()", ["test_eae.py"],
     "Kozachenko-Leonenko without the factor d"),
    ("eae.py", "digamma(n) - digamma(k)", "digamma(n) + digamma(k)", ["test_eae.py"],
     "sign of psi(k)"),
    ("eae.py", "nn.BatchNorm1d(args.latent_dim, affine=False)", "nn.BatchNorm1d(args.latent_dim)",
     ["test_eae.py"], "latent batch norm with affine scale and shift"),
    ("eae.py", "return args.lr * args.lr_decay ** epoch",
     "return args.lr * args.lr_decay ** (epoch + 1)", ["test_eae.py"],
     "learning-rate decay one epoch early"),
    ("eae.py", "if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))",
     "if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)))", ["test_eae.py"],
     "L2 widened to the decoder's first Linear"),
    ("eae.py", '("all" if args.dataset == "celeba" else "none")',
     '("all" if args.dataset == "cifar10" else "none")', ["test_eae.py"],
     "spectral norm for the wrong data set"),
    # iae_lde.py
    ("iae_lde.py", "return (self.decoder(z) - self.low) / (1 - self.low)",
     "return self.decoder(z)", ["test_iae_lde.py"], "tanh output shown without (y + 1) / 2"),
    ("iae_lde.py", "output, target = output.float(), x * (1 - low) + low",
     "output, target = output.float(), x", ["test_iae_lde.py"],
     "tanh output compared with x in [0, 1], not 2x - 1"),
    ("iae_lde.py", "perceptual((output - low) / (1 - low), x)", "perceptual(output, x)",
     ["test_iae_lde.py"], "perceptual loss fed the [-1, 1] output"),
    ("iae_lde.py", "Normalize([0.5] * channels, [0.5] * channels) if self.low else nn.Identity()",
     "nn.Identity()", ["test_iae_lde.py"], "tanh model reads x in [0, 1], not 2x - 1"),
    ("iae_lde.py", 'self.low = -1.0 if args.output == "tanh" else 0.0',
     "self.low = -1.0", ["test_iae_lde.py"], "--output sigmoid ignored"),
    ("iae_lde.py", "self.widths = [2] + [16 * 2 ** i for i in range(layers)]",
     "self.widths = [2] + [min(16 * 2 ** i, 1024) for i in range(layers)]",
     ["test_iae_lde.py"], "LDE capped at 1024 channels (not armdn00's 2048 for d 256)"),
    ("iae_lde.py", "logits, mu, log_sigma = self.head(h)", "mu, logits, log_sigma = self.head(h)",
     ["test_iae_lde.py"], "head order not (pi, mu, sigma)"),
    ("iae_lde.py", '"cifar10": dict(latent_dim=256, warmup_epochs=128, perc_weight=0.0, '
     'lde_components=50,', '"cifar10": dict(latent_dim=256, warmup_epochs=128, perc_weight=0.1, '
     'lde_components=50,', ["test_iae_lde.py"], "CIFAR-10 with the perceptual loss"),
    ("iae_lde.py", 'if stored.get("settings") == settings:', "if stored:", ["test_iae_lde.py"],
     "a stored LDE fit of other settings, or of another encoder epoch's codes, continued"),
    ("iae_lde.py", 'args, given, "iae_lde", resumable=LDE_SETTINGS)', 'args, given, "iae_lde")',
     ["test_iae_lde.py"], "--resume ignores the --lde-* flags"),
    ("iae_lde.py", 'names = LDE_SETTINGS + ("seed",) if run_args else',
     'names = () if run_args else', ["test_iae_lde.py"],
     "--fit-lde uses the command-line defaults, not the run's own settings"),
    ("iae_lde.py", "int(latent_dim * (epoch + step / steps) / warmup_epochs + 1)",
     "int(latent_dim * (epoch + step / steps) / warmup_epochs)", ["test_iae_lde.py"],
     "incremental schedule off by one (no dimension at first)"),
    ("iae_lde.py", "z = z * (torch.arange(z.shape[1], device=z.device) < active)",
     "z = z * (torch.arange(z.shape[1], device=z.device) <= active)", ["test_iae_lde.py"],
     "one dimension too many unmasked"),
    ("iae_lde.py", "** 2 - log_sigma", "** 2 + log_sigma", ["test_iae_lde.py"],
     "sign of log sigma in the mixture NLL"),
    ("iae_lde.py", "values = F.pad(z, (self.pad, 0))[:, :-1]",
     "values = F.pad(z, (self.pad - 1, 0))", ["test_iae_lde.py"],
     "LDE not causal: p(z_i) sees z_i"),
    ("iae_lde.py", "return logits.log_softmax(2), mu, log_sigma", "return logits, mu, log_sigma",
     ["test_iae_lde.py"], "mixture weights not normalised"),
    ("iae_lde.py", "return 0.5 * sum(F.mse_loss(a, b)", "return sum(F.mse_loss(a, b)",
     ["test_iae_lde.py"], "perceptual loss without its 1/2"),
    ("iae_lde.py", "[features[:2], features[2:7], features[7:]]",
     "[features[:4], features[4:7], features[7:]]", ["test_iae_lde.py"],
     "perceptual layer relu1_2 instead of relu1_1"),
    # deciphering.py
    ("deciphering.py", "- shifts[:, None] + max_shift", "+ shifts[:, None] + max_shift",
     ["test_deciphering.py"], "shift direction"),
    ("deciphering.py", "return 50 + 50 * shifts.float()", "return 50 - 50 * shifts.float()",
     ["test_deciphering.py"], "the MLP told the opposite shift"),
    ("deciphering.py", "args.widths[2] - 1 - stage3", "args.widths[1] - 1 - stage3",
     ["test_deciphering.py"], "flipped pattern reversed over the wrong width"),
    ("deciphering.py", "x = images.float().div_(127.5).sub_(1)", "x = images.float().div_(255)",
     ["test_deciphering.py"], "LPIPS targets in [0, 1] instead of [-1, 1]"),
    ("deciphering.py", "h = h * mask.to(h.dtype)[:, :, None, None]", "h = h",
     ["test_deciphering.py"], "the dropout pattern is never applied"),
    ("deciphering.py", "min(1 - (1 + t) ** -EMA_POWER, cap)", "min(1 - t ** -EMA_POWER, cap)",
     ["test_deciphering.py"], "EMA warm-up off by one step"),
    ("deciphering.py", "min(epoch / warmup, 1.0)", "min((epoch + 1) / warmup, 1.0)",
     ["test_deciphering.py"], "weight-decay warm-up off by one epoch"),
    ("deciphering.py", "decay = 0.0 if step <= EMA_AFTER + EMA_EVERY else",
     "decay = 0.0 if step <= EMA_AFTER else", ["test_deciphering.py"],
     "EMA without ema_pytorch's second copy at step 110"),
    ("deciphering.py", "groups = math.ceil(len(patterns) / SAMPLE_BATCH)",
     "groups = max(1, len(patterns) // SAMPLE_BATCH)", ["test_deciphering.py"],
     "sampler batch norm over a group of 251"),
    ("deciphering.py", "groups=max(1, cin // 128)", "groups=max(1, cin // widths[0])",
     ["test_deciphering.py"], "decoder groups tied to the first width, not 128 channels"),
    ("deciphering.py", "values = {k: v for k, v in stored.items() if k not in NOT_INHERITED}",
     "values = {k: v for k, v in defaults.items() if k not in NOT_INHERITED}",
     ["test_deciphering.py"],
     "phase two resets phase one's settings to the defaults"),
    # common.py
    ("common.py", "number < CELEBA_VALID_FROM else", "number < CELEBA_TEST_FROM else",
     ["test_data.py"], "CelebA's valid partition trained on"),
    ("common.py", 'if stored.get("schedule_epochs") == 0 and', 'if False and', ["test_dae.py"],
     "a resumed run with more --epochs gets a new schedule"),
    ("common.py", "if k not in NOT_A_SETTING and args.get(k) != v",
     'if k in ("dataset", "filters") and args.get(k) != v', ["test_dae.py"],
     "a paper's figure printed beside runs of other settings"),
    ("common.py", 'pixels = pixels[:1500] if split == "train" else pixels[1500:]',
     'pixels = pixels[1500:] if split == "train" else pixels[:1500]',
     ["test_data.py", "test_dae.py"], "train and test splits swapped"),
    ("common.py", "range(0, len(images) - batch_size + 1, batch_size)",
     "range(0, len(images) - batch_size, batch_size)", ["test_data.py"],
     "an epoch drops one batch too many"),
    ("common.py", "(epoch >= int(0.33 * epochs))", "(epoch > int(0.33 * epochs))",
     ["test_dae.py"], "Daly et al.'s first lr drop one epoch late"),
    ("common.py", "model.eval()\n    if state.get(\"samplers\"):",
     "model.train()\n    if state.get(\"samplers\"):", ["test_eae.py"],
     "ex-post densities fitted to train-mode codes (VAE, RAE, EAE, IAE)"),
    ("common.py", '"mvg": LatentSampler(one, codes.mean(0, keepdim=True)',
     '"mvg": LatentSampler(one, codes.median(0, keepdim=True).values', ["test_samplers.py"],
     "MVG centred on the median"),
    ("common.py", "torch.logsumexp(per_component + self.weights.log(), dim=1)",
     "torch.logsumexp(per_component, dim=1)", ["test_samplers.py"],
     "mixture log-density without the weights"),
    ("common.py", "return total // 2, total - total // 2", "return total - total // 2, total // 2",
     ["test_backbone.py"], "TensorFlow 'same' padding: the odd pixel before"),
    ("common.py", "nn.utils.parametrizations.spectral_norm(m, dim=0)",
     "nn.utils.parametrizations.spectral_norm(m)", ["test_backbone.py"],
     "spectral norm of the transposed convs in PyTorch's layout, not Keras'"),
    ("common.py", "m.momentum, m.eps = 0.01, 1e-3", "m.momentum, m.eps = 0.99, 1e-3",
     ["test_backbone.py"], "Keras momentum 0.99 passed to PyTorch as is"),
    ("common.py", "- 2 * trace_sqrt).item()", "- trace_sqrt).item()", ["test_eval.py"],
     "FID's cross term halved"),
    ("common.py", "(log_p.exp() * (log_p - log_py))", "(log_p.exp() * (log_py - log_p))",
     ["test_eval.py"], "sign of the Inception Score's KL"),
    ("common.py", ".kthvalue(k + 1, 1)", ".kthvalue(k, 1)", ["test_eval.py"],
     "precision/recall radius counts the point itself"),
    # eval.py
    ("eval.py", 'f"inception{net.weights_digest}-{common.FEATURE_PROTOCOL}.npz"',
     'f"{common.FEATURE_PROTOCOL}.npz"', ["test_eval.py"],
     "FID cache ignores the Inception weights"),
    ("eval.py", "\n                    - math.log(n) - dim", "\n                    - dim",
     ["test_eval.py"],
     "Parzen estimate without -log S"),
    ("eval.py", 'return held, test[:10000], "held-out training images"',
     'return test[:10000], test[:10000], "held-out training images"', ["test_eval.py"],
     "Parzen width chosen on the scored test images, not the held-out ones"),
    ("eval.py", 'if old.get("request") == request and', 'if old.get("method") and',
     ["test_eval.py"], "metrics.json reused for another request"),
    ("eval.py", "kid = [None if v is None else 1000 * v", "kid = [None if v is None else v",
     ["test_eval.py"], "KID column not x 1000"),
    ("common.py", "values.append(within / (m * (m - 1)) - 2 * kernel(x, y).sum() / m ** 2)",
     "values.append(within / (m * m) - 2 * kernel(x, y).sum() / m ** 2)", ["test_eval.py"],
     "KID biased (diagonal-free sums over m^2)"),
    ("common.py", "kernel = lambda a, b: (a @ b.T / real.shape[1] + 1) ** 3",
     "kernel = lambda a, b: (a @ b.T + 1) ** 3", ["test_eval.py"],
     "KID kernel without gamma = 1 / D"),
    ("common.py", "train_images = train_images[:len(train_images) - holdout]",
     "train_images = train_images", ["test_iae_lde.py"], "held-out images trained on"),
    ("common.py", "unreadable.append(i)\n            continue",
     "unreadable.append(i)", ["test_data.py"], "an unreadable file kept as a blank image"),
    ("eval.py", "(codes[0::2] + codes[1::2]) / 2", "codes[0::2]", ["test_eval.py"],
     "Interp decodes an endpoint, not the midpoint"),
    # The slips outside readers tried (each named by the test that catches it)
    ("deciphering.py", "zip(optimizer.param_groups, (args.lr, mlp_rate(args)))",
     "zip(optimizer.param_groups, (mlp_rate(args), args.lr))", ["test_deciphering.py"],
     "AdamW groups swapped: the body at the MLP's rate"),
    ("deciphering.py", "lpips_loss(training.lpips_net, output, target, args.lpips_size)",
     "lpips_loss(training.lpips_net, output, target, args.image_size)", ["test_deciphering.py"],
     "LPIPS at the data's 32 px, not --lpips-size"),
    ("deciphering.py", "position = torch.full((len(p),), 50.0, device=device)",
     "position = torch.full((len(p),), 0.0, device=device)", ["test_deciphering.py"],
     "samples decoded at MLP position 0 (a shift of -R)"),
    ("deciphering.py", "0.1 ** sum(epoch >= e for e in args.lr_drops)",
     "0.1 ** sum(epoch > e for e in args.lr_drops)", ["test_deciphering.py"],
     "learning-rate drops one epoch late"),
    ("vae.py", "return self.moments(x)[0]  # [B, d]", "return self.moments(x)[1]  # [B, d]",
     ["test_vae.py"], "encode returns log sigma"),
    ("vae.py", "return self.moments(x)[0]  # [B, d]",
     "mu, log_sigma = self.moments(x)\n        return mu + log_sigma.exp() * torch.randn_like(mu)",
     ["test_vae.py"], "encode returns a sampled z"),
    ("rae.py", "min_delta=1e-4 * pixels)", "min_delta=1e-4)", ["test_rae.py"],
     "plateau min_delta not scaled by the pixels"),
    ("rae.py", "return common.shard(every[:len(every) - n_val]), common.shard(",
     "return common.shard(every), common.shard(", ["test_rae.py"],
     "the validation tenth also trained on"),
    ("rae.py", '"rae-l2": (1e-3, 1e-6)', '"rae-l2": (1e-3, 1e-7)', ["test_rae.py"],
     "a wrong number in the official weights"),
    ("dae.py", 'gmm_components: int = arg(10,', 'gmm_components: int = arg(5,', ["test_dae.py"],
     "a default GMM other than 10 components"),
    ("common.py", "return self.convs(x * 2 - 1)", "return self.convs(x)", ["test_backbone.py"],
     "the encoder reads [0, 1], not [-1, 1]"),
    ("iae_lde.py", "        lde.train()\n", "        lde.eval()\n", ["test_iae_lde.py"],
     "the LDE trained with its batch norms in eval mode"),
    # Issue 23's fixes
    ("deciphering.py", "if link is not None and common.is_main():  # before phase two's",
     "if False:  # before phase two's",
     ["test_deciphering.py::test_a_two_phase_run_stopped_anywhere_resumes_as_if_never_stopped",
      "test_lifecycle.py"],
     "phase_two.json never written (so --resume of phase one starts phase two again)"),
    ("deciphering.py", "return args.mlp_lr if args.mlp_lr >= 0 else args.lr / 10",
     "return args.mlp_lr if args.mlp_lr >= 0 else 2e-4", ["test_deciphering.py"],
     "the MLP's rate not tied to --lr"),
    ("rae.py", 'VALIDATION = {"mnist": 10000, "cifar10": 10000}', "VALIDATION = {}",
     ["test_rae.py"], "CIFAR-10 validates on its last tenth, not the official last 10,000"),
    ("deciphering.py", 'values["finetune_from"] = str(Path(args.finetune_from).resolve())',
     'values["finetune_from"] = args.finetune_from', ["test_deciphering.py"],
     "phase one's folder kept relative (eval.py elsewhere loses the paper's figure)"),
    ("deciphering.py", "small = x.shape[-1] < size", "small = True",
     ["test_deciphering.py"], "LPIPS resizes images of 128 px or more"),
    ("deciphering.py", "args = dataclasses.replace(args, crop=160)", "args = args",
     ["test_deciphering.py"], "CelebA cropped to 140 (Daly's), not Maeda's 160"),
    ("rae.py", 'sn_layers = "all" if variant == "rae-sn" else Args().sn_layers',
     "sn_layers = Args().sn_layers", ["test_rae.py"],
     "Table 1's RAE-SN figure beside decoder-only runs"),
    ("iae_lde.py",
     "order = torch.randperm(len(codes), generator=torch.Generator().manual_seed(args.seed))",
     "order = torch.arange(len(codes) - 1, -1, -1)", ["test_iae_lde.py"],
     "the LDE's held-out codes are the last ones (one class, where files are sorted by it)"),
    ("iae_lde.py", "    if best[\"model\"]:\n        lde.load_state_dict(best[\"model\"])",
     "    if False:\n        lde.load_state_dict(best[\"model\"])", ["test_iae_lde.py"],
     "the LDE of the last epoch kept, not the best on held-out codes"),
    ("eval.py", "images = common.load_images(dataset, data_root, split, image_size, crop)",
     'images = common.load_images(dataset, data_root, "test", image_size, crop)', ["test_eval.py"],
     "--ref train scored against the test split"),
    ("eval.py", 'columns[name]["code_nll"] = -run.samplers[name].log_prob(codes)',
     'columns[name]["code_nll"] = run.samplers[name].log_prob(codes)', ["test_eval.py"],
     "the test-code NLL reported with the sign of a log-likelihood"),
    ("iae_lde.py", "        if state is not None:\n            if stamp() != written:",
     "        if False:\n            if stamp() != written:", ["test_iae_lde.py"],
     "the LDE fit not kept in the run's checkpoint: a stopped fit starts again"),
]


def tree_files() -> list[str]:
    """The files a clean clone would have, plus new ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def run_one(number: int, mutation, files) -> tuple[int, str, float, str]:
    path, old, new, tests, _ = mutation
    started = time.time()
    with tempfile.TemporaryDirectory(prefix=f"mutant{number}-") as scratch:
        for f in files:
            (Path(scratch) / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, Path(scratch) / f)
        text = (Path(scratch) / path).read_text()
        if text.count(old) != 1:
            return number, "stale", 0.0, f"matches {text.count(old)} times"
        (Path(scratch) / path).write_text(text.replace(old, new))
        # Each pytest gets its share of the cores: torch's threads spin-wait, and two
        # processes with a thread per core each slow each other down many times over.
        threads = str(max(1, len(os.sched_getaffinity(0)) // JOBS))  # the cores it may use
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads}
        marks = ["-m", "slow or not slow"] if any("::" in t for t in tests) else []
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p",
                                 "no:cacheprovider", *marks, *(f"tests/{t}" for t in tests)],
                                cwd=scratch, env=env, capture_output=True, text=True)
    failed = [line.split(" - ")[0] for line in result.stdout.splitlines()
              if line.startswith(("FAILED", "ERROR"))]
    status = "caught" if result.returncode != 0 else "SURVIVED"
    return number, status, time.time() - started, failed[0] if failed else ""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the mutations and stop")
    parser.add_argument("--only", type=int, nargs="+", help="numbers of the mutations to run")
    parser.add_argument("--jobs", type=int, default=2, help="mutations tested at once")
    args = parser.parse_args()
    global JOBS
    JOBS = args.jobs
    chosen = [i for i in range(len(MUTATIONS)) if not args.only or i in args.only]
    if args.list:
        for i in chosen:
            path, _, _, tests, what = MUTATIONS[i]
            print(f"{i:3d}  {path:15s} {what}  [{', '.join(tests)}]")
        return
    files = tree_files()
    print(f"{len(chosen)} mutations of {len({MUTATIONS[i][0] for i in chosen})} files, "
          f"{args.jobs} at a time")
    results = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        for number, status, seconds, detail in pool.map(
                lambda i: run_one(i, MUTATIONS[i], files), chosen):
            results[number] = status
            print(f"{number:3d} {status:8s} {seconds:5.0f} s  {MUTATIONS[number][0]:15s} "
                  f"{MUTATIONS[number][4]}  {detail}", flush=True)
    bad = [i for i, s in results.items() if s != "caught"]
    print(f"\n{len(results) - len(bad)} of {len(results)} mutations caught"
          + (f"; not caught: {bad}" if bad else ""))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
