"""Mechanical mutation sweep of the defining code (development only; pytest does not collect
it). Every arithmetic and comparison operator, numeric constant (int +-1, float x2 and
x0.5), boolean constant, unary minus, `.detach()`, `torch.no_grad()`, `.train()` / `.eval()`
switch and `Args` default of the functions and tables named in SCOPE is changed, one at a
time; the tests that run the changed code must then fail.

    python tests/sweep.py                  # every file of SCOPE
    python tests/sweep.py rae.py           # one file
    python tests/sweep.py rae.py --list    # its mutants, without running them
    python tests/sweep.py --jobs 1         # one mutant at a time (default: 2)

How:
  1. Mutants come from each file's syntax tree (stdlib ast and tokenize): one per operator
     token, constant, unary minus, call or default, as a replacement of that span of text.
  2. One pytest run of the in-process tests (two processes, a thread each) records, with a
     trace hook, which in-scope functions and lines each test runs (a fixture's count for
     every test that uses it) and how long each test takes.
  3. For each mutant, a process forked from one that has already imported torch and the
     project applies it in memory (the function's code object and defaults swapped for the
     mutated ones; a table or an Args class rebuilt from the mutated source) and runs the
     tests that run the mutated statement (for a default: call its function), those that
     killed mutants of the same function first, then the fastest, stopping at the first failure
     (pytest -x). A mutant whose current test has run three times that test's mapped time
     plus 10 s hangs (or makes training far longer) and counts as killed. The checkout is
     never written; tests run in temporary folders.
  4. A mutant no test fails survives, unless tests/equivalent.txt lists it with the reason
     it cannot change a result. The sweep exits 1 on any unlisted survivor, and names the
     entries of equivalent.txt that no longer match a mutant.

What library: mutmut 3 (PyPI) was the first choice, but it does not reach what matters here:
it skips every decorated function (our @torch.no_grad() samplers, encoders and EMA), never
mutates class bodies or module constants (the Args defaults, PER_DATASET, OFFICIAL, the
EMA constants), has no float x2 / x0.5, int -1, .detach(), no_grad or train/eval mutations,
and adds string and argument-removal mutations by the thousand. Its method (a fork per
mutant, tests chosen by the functions they call) is the one used here.

Not mutated, because it cannot change a result: f-strings and the messages of print,
warnings and errors; progress-bar arguments (desc, total), cadence (`step % 50 == 0`) and
JSON indentation; the CUDA-only memory-layout branches (test_cuda.py's domain); timing
figures (time.time(), seconds, images_per_sec); the conditions true only under torchrun
(size > 1, alone or in an `and`) and the blocks they guard (test_distributed.py and
tests/mutate.py); arguments of the grid writers (save_grid and the like); `.detach()` of
what is added to an epoch's running sum (it only frees the step's graph); `set_to_none` of zero_grad (every trained parameter
gets a gradient every step). Not run per mutant: tests that start subprocesses
(test_cli.py, test_distributed.py, the slow ones), test_benchmark.py and test_cuda.py;
torchrun-only helpers are out of SCOPE. tests/mutate.py covers what only those tests guard.
"""
from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import hashlib
import importlib
import inspect
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tokenize
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "tests" / "equivalent.txt"

# The defining code of each file: top-level functions, classes (every method) and tables.
SCOPE = {
    "common.py": [
        # data: splits, scaling, batches
        "load_images", "_folder", "_celeba", "celeba_partition", "_decode_cached", "_digits",
        "epoch_generator", "batches",
        # the backbone
        "_per_stage", "keras_init", "spectral_norm", "tf_same_padding", "SameConv",
        "SameConvTranspose", "_stage", "kernel_size", "Encoder", "Decoder",
        # latent samplers and their fitting
        "LatentSampler", "normal_sampler", "fit_samplers", "samplers_from_state",
        "keep_samplers", "encode_all", "encode", "decode", "sample", "Epoch",
        # schedules, resume, the paper's setting
        "set_lr", "daly_learning_rate", "stop_if_diverged", "local_batch", "shard", "resume",
        "start", "fast", "autocast", "memory_format",
        "open_run", "save_epoch", "keep_log_until", "write_args", "load_checkpoint", "RENAMED",
        "as_compared", "off_paper", "paper_row", "RESUMABLE", "NOT_A_SETTING",
        "CELEBA_VALID_FROM", "DEFAULT_SIZE", "DEFAULT_CROP",
        # metrics
        "exact_matmul", "tf1_bilinear", "Inception", "inception_outputs", "gaussian_stats",
        "psd_sqrt", "frechet_distance", "fidelity_rng", "inception_score", "precision_recall",
        "kernel_inception_distance",
    ],
    "dae.py": ["PAPER_FID", "Args", "latent_layer", "without_batch_norm", "DAE",
               "reconstruction_loss", "train", "paper_settings", "paper_fid"],
    "vae.py": ["GAUSSIAN_KL_WEIGHT", "PAPER_FID", "Args", "kl_weight", "GaussianEncoder", "VAE",
               "kl_divergence", "reconstruction_loss", "vae_loss", "train", "paper_settings",
               "paper_fid"],
    "rae.py": ["OFFICIAL", "VALIDATION", "PAPER_FID", "Args", "weights", "RAE",
               "reconstruction_loss", "latent_loss", "gradient_penalty", "decoder_l2",
               "loss_terms", "rae_loss", "KerasPlateau", "validation_split", "data_splits",
               "train", "paper_settings", "paper_fid"],
    "eae.py": ["PAPER_FID", "Args", "EAE", "knn_entropy", "normal_entropy",
               "reconstruction_loss", "decoder_l2", "eae_loss", "learning_rate",
               "paper_regulariser", "train", "paper_settings", "paper_fid"],
    "iae_lde.py": ["PER_DATASET", "Args", "IAE", "active_dims", "Perceptual",
                   "autoencoder_loss", "without_holdout", "train", "LDE", "mixture_nll",
                   "LDESampler",
                   "sampler_from_state", "train_lde", "data_splits", "fit_lde", "paper_parzen",
                   "with_dataset_defaults", "main"],
    "deciphering.py": ["EMA_EVERY", "SAMPLE_BATCH", "PHASE_TWO_DEFAULTS", "Args",
                       "pattern_count",
                       "random_subsets", "draw_patterns", "make_patterns", "cluster_images",
                       "masks_of", "flips", "flip_patterns", "conv_bn", "ResBlock", "Bottleneck",
                       "sinusoidal", "DecipheringAE", "shift_images", "shift_position",
                       "load_lpips", "lpips_loss", "training_batch", "mlp_rate", "weight_decay",
                       "ema_decay", "update_ema", "check", "phase_two_args", "set_up", "train",
                       "generate", "sample", "load_run", "PAPER_FID", "BOTH_PHASES",
                       "paper_settings", "paper_fid", "main"],
    "eval.py": ["Args", "write_atomically", "reference", "generated", "smoke_test",
                "reconstructed", "interpolated", "score", "loaded", "read_json", "evaluate",
                "paper_figures", "PARZEN_SIGMAS", "parzen_log_likelihood", "parzen_split",
                "parzen_width", "parzen_points", "parzen", "table", "parzen_table",
                "FID_SUFFIXES", "folder_stats", "main"],
}
# Tests not run per mutant: subprocesses (their code runs where no trace hook sees it), the
# benchmark's smoke test and the CUDA tests.
NOT_RUN = ("tests/test_cli.py", "tests/test_distributed.py", "tests/test_benchmark.py",
           "tests/test_cuda.py")

ARITHMETIC = {ast.Add: "-", ast.Sub: "+", ast.Mult: "/", ast.Div: "*", ast.FloorDiv: "/",
              ast.Mod: "/", ast.Pow: "*", ast.MatMult: "*", ast.BitAnd: "|", ast.BitOr: "&"}
SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
          ast.Mod: "%", ast.Pow: "**", ast.MatMult: "@", ast.BitAnd: "&", ast.BitOr: "|"}
COMPARISON = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="),
              ast.GtE: (">=", ">"), ast.Eq: ("==", "!="), ast.NotEq: ("!=", "=="),
              ast.Is: ("is", "is not"), ast.IsNot: ("is not", "is"), ast.In: ("in", "not in"),
              ast.NotIn: ("not in", "in")}
# Calls whose arguments only reach the screen or a PNG grid, and keywords that only shape a
# progress bar.
DISPLAY_CALLS = {"print", "warn", "set_postfix", "UserError", "ValueError", "missing_weights",
                 "save_grid", "save_reconstructions", "save_interpolations",
                 "save_sample_grids", "save_test_reconstructions"}
DISPLAY_KEYWORDS = {"desc", "total", "label", "leave", "mininterval", "progress", "verbose",
                    "indent", "set_to_none"}
TIMING_KEYS = {"seconds", "images_per_sec"}
# Calls never deleted as statements: what only reaches the screen (DISPLAY_CALLS too), and
# the process group's own calls (test_distributed.py's domain).
NOT_DELETED = {"set_postfix", "simplefilter", "end_processes", "__init__"}
# Keywords that place a tensor on a device or in a memory layout: without them it is made
# on the CPU, contiguous, as the sweep runs anyway (test_cuda.py runs them on a GPU).
DEVICE_KEYWORDS = {"device", "memory_format"}
# Settings fields that name a path or a device: replaced only by one another (their type,
# str, would otherwise pair them with every string setting).
PATH_FIELDS = {"data_root", "out_dir", "resume", "fit_lde", "finetune_from", "save_samples",
               "json", "device", "runs", "fid"}
# The progress bar's cadence, and the CUDA memory-layout branches (the same values on the CPU;
# tests/test_cuda.py runs them on a GPU).
UNTESTED_BRANCHES = {"self.steps % 50 == 0", "device.type == 'cuda'", "x.is_cuda"}
# Conditions true only under torchrun: test_distributed.py's domain (tests/mutate.py).
TORCHRUN_ONLY = {"size > 1", "world()[1] > 1"}
# pytest plugins a forked run does without: the cache, and the unraisable-exception check,
# whose gc.collect() calls cost a second in a process that has imported torch.
QUIET = ["-p", "no:cacheprovider", "-p", "no:unraisableexception", "-p", "no:threadexception",
         "-p", "no:benchmark"]
NULL_CONTEXT = '__import__("contextlib").nullcontext()'
NO_DECORATOR = "(lambda function: function)"


@dataclass
class Mutant:
    file: str
    where: str  # qualified name of the function or method, or the class / table mutated
    kind: str  # "function" (code swapped), "class" or "table" (rebuilt from the source)
    start: int  # the replaced span, as offsets in the file's text
    end: int
    new: str
    before: str  # the line, stripped, before and after
    after: str
    occurrence: int = 1
    readers: tuple = ()  # a table's: the in-scope functions that read it
    lines: tuple = ()  # in a function's body: the lines of the statement that holds it
    family: str = "operator"  # operator, argument, swap, name or statement (FAMILIES)

    @property
    def key(self) -> str:
        more = f" #{self.occurrence}" if self.occurrence > 1 else ""
        return f"{self.file} | {self.where} | {self.before}  =>  {self.after}{more}"


def call_name(node) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def suffix(name: str) -> str:
    return name.rstrip("_").split("_")[-1] if name.strip("_") else name


def local_names(node: ast.FunctionDef) -> dict:
    """{name: (line of its first binding, its kinds)} of a function's parameters (line 0)
    and the names its body binds, nested functions, lambdas and comprehensions aside. A
    name's kinds (KINDS): its suffix; its annotation; the function a single-name assignment
    calls."""
    names = {}

    def bind(name: str, line: int, *kinds):
        if name in ("self", "cls", "_"):
            return
        first, known = names.get(name, (line, set()))
        names[name] = (min(first, line), known | {("suffix", suffix(name)), *kinds})

    a = node.args
    for p in [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, [a.vararg, a.kwarg])]:
        bind(p.arg, 0, *([("type", ast.unparse(p.annotation))] if p.annotation else []))

    def walk(n):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef,
                          ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            bind(n.id, n.lineno)
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            bind(n.target.id, n.lineno, ("type", ast.unparse(n.annotation)))
        if (isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
                and isinstance(n.value, ast.Call)):
            bind(n.targets[0].id, n.lineno, ("call", ast.unparse(n.value.func)))
        for child in ast.iter_child_nodes(n):
            walk(child)

    for statement in node.body:
        walk(statement)
    return names


def dataclass_fields(file: str) -> dict:
    """{variable name: {field: annotation}} for the settings objects a file's functions
    read: `args` (the file's Args; in common.py the fields every method's Args has, with
    the same type) and `training` (deciphering.py's Training)."""
    def classes(path: Path) -> dict:
        found = {}
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and any(
                    "dataclass" in ast.unparse(d) for d in node.decorator_list):
                found[node.name.lower()] = {
                    i.target.id: "path" if i.target.id in PATH_FIELDS else ast.unparse(i.annotation)
                    for i in node.body if isinstance(i, ast.AnnAssign)}
        return found

    if file != "common.py":
        return classes(ROOT / file)
    methods = [classes(ROOT / f).get("args", {}) for f in SCOPE if f not in ("common.py",
                                                                              "eval.py")]
    shared = {k: v for k, v in methods[0].items() if all(m.get(k) == v for m in methods)}
    return {"args": shared}


def string_keys(tree) -> dict:
    """{container name: the string keys the file subscripts it with}."""
    keys = {}
    for n in ast.walk(tree):
        if (isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name)
                and isinstance(n.slice, ast.Constant) and isinstance(n.slice.value, str)):
            keys.setdefault(n.value.id, set()).add(n.slice.value)
    return keys


class Generator(ast.NodeVisitor):
    """The mutants of one file's in-scope definitions."""

    def __init__(self, file: str, names: list[str]):
        self.file, self.names = file, set(names)
        self.text = (ROOT / file).read_text()
        self.lines = self.text.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))
        self.tokens = [t for t in tokenize.generate_tokens(io.StringIO(self.text).readline)
                       if t.type in (tokenize.OP, tokenize.NAME)]
        self.mutants: list[Mutant] = []
        self.where, self.kind, self.statement = "", "", None
        self.module = importlib.import_module(file[:-3])  # to read the callees' signatures
        self.fields = dataclass_fields(file)  # {"args": {field: type}, "training": ...}
        self.keys = string_keys(ast.parse(self.text))  # {container name: keys read or set}
        self.scope, self.nested = {}, []  # the function's names; names of nested scopes

    # positions: ast gives UTF-8 byte columns, tokenize character columns
    def offset(self, line: int, byte_col: int) -> int:
        text = self.lines[line - 1]
        return self.starts[line - 1] + len(text.encode()[:byte_col].decode())

    def span(self, node) -> tuple[int, int]:
        return (self.offset(node.lineno, node.col_offset),
                self.offset(node.end_lineno, node.end_col_offset))

    def token_offset(self, position) -> int:
        return self.starts[position[0] - 1] + position[1]

    def token_between(self, start: int, end: int, word: str) -> tuple[int, int]:
        """The span of `word` (an operator, or `is not` / `not in`) between two offsets."""
        inside = [t for t in self.tokens if start <= self.token_offset(t.start)
                  and self.token_offset(t.end) <= end]
        parts = word.split()
        for i in range(len(inside) - len(parts) + 1):
            if [t.string for t in inside[i:i + len(parts)]] == parts:
                return self.token_offset(inside[i].start), self.token_offset(
                    inside[i + len(parts) - 1].end)
        raise ValueError(f"{self.file}: no {word!r} between offsets {start} and {end}")

    def add(self, start: int, end: int, new: str, family: str = "operator"):
        first = self.text.rfind("\n", 0, start) + 1
        last = self.text.find("\n", end)
        line = self.text[first:last]
        mutated = line[:start - first] + new + line[end - first:]
        if new == NO_DECORATOR:
            mutated = f"(decorator removed) {line.strip()}"
        lines = (tuple(range(self.statement.lineno, self.statement.end_lineno + 1))
                 if self.statement is not None else ())
        flat = lambda text: " ".join(part.strip() for part in text.splitlines())  # noqa: E731
        self.mutants.append(Mutant(self.file, self.where, self.kind, start, end, new,
                                   flat(line), flat(mutated), lines=lines, family=family))

    def source(self, node) -> str:
        return self.text[slice(*self.span(node))]

    def visit(self, node):
        """Keeps the innermost statement of a function's body in self.statement."""
        if not (isinstance(node, ast.stmt) and self.kind == "function"):
            return super().visit(node)
        outer, self.statement = self.statement, node
        try:
            self.delete(node)
            return super().visit(node)
        finally:
            self.statement = outer

    # what is mutated
    def run(self) -> list[Mutant]:
        tree = ast.parse(self.text)
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in self.names:
                if isinstance(node, ast.FunctionDef):
                    self.function(node, node.name)
                elif node.name == "Args":
                    self.args_class(node)
                else:
                    for item in node.body:
                        if isinstance(item, ast.FunctionDef):
                            self.function(item, f"{node.name}.{item.name}")
            elif self.assigned(node) & self.names:
                self.where, self.kind = ", ".join(sorted(self.assigned(node))), "table"
                self.scope = {}
                self.visit(node)
        readers = {}  # table name -> functions of this file that read it
        for node in tree.body:
            defs = ([(node.name, node)] if isinstance(node, ast.FunctionDef) else
                    [(f"{node.name}.{d.name}", d) for d in node.body
                     if isinstance(d, ast.FunctionDef)] if isinstance(node, ast.ClassDef) else [])
            for qualname, d in defs:
                for n in ast.walk(d):
                    if isinstance(n, ast.Name):
                        readers.setdefault(n.id, set()).add(f"{self.file}:{qualname}")
        for m in self.mutants:
            if m.kind == "table":
                m.readers = tuple(sorted(set().union(*(readers.get(n, set())
                                                       for n in m.where.split(", ")))))
        seen = {}
        for m in self.mutants:  # the same change of the same line twice in one scope
            seen[(m.where, m.before, m.after)] = seen.get((m.where, m.before, m.after), 0) + 1
            m.occurrence = seen[(m.where, m.before, m.after)]
        return self.mutants

    @staticmethod
    def assigned(node) -> set[str]:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and isinstance(
                node.value.func, ast.Attribute) and isinstance(node.value.func.value, ast.Name):
            return {node.value.func.value.id}  # PER_DATASET.update(...)
        return set()

    def function(self, node: ast.FunctionDef, qualname: str):
        self.where, self.kind, self.statement = qualname, "function", None
        self.scope = local_names(node)
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call) and call_name(decorator) == "no_grad":
                self.add(*self.span(decorator), NO_DECORATOR)
        a = node.args
        named = [*zip(a.args[len(a.args) - len(a.defaults):], a.defaults),
                 *zip(a.kwonlyargs, a.kw_defaults)]
        for parameter, default in named:
            if default is not None and parameter.arg not in DISPLAY_KEYWORDS:
                self.visit(default)
        for statement in node.body:
            if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)):
                self.visit(statement)  # (docstrings aside)

    def args_class(self, node: ast.ClassDef):
        """Args: the default of every field (the first argument of `arg`)."""
        self.where, self.kind, self.scope = "Args", "class", {}
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.value, ast.Call)):
                continue
            default = item.value.args[0]
            if isinstance(default, ast.Constant) and isinstance(default.value, str):
                choices = next((k.value for k in item.value.keywords if k.arg == "choices"), None)
                options = ([c.value for c in choices.elts] if isinstance(choices, ast.Tuple)
                           else [])
                new = (options[(options.index(default.value) + 1) % len(options)]
                       if default.value in options else default.value + "x")
                self.add(*self.span(default), repr(new))
            else:
                self.visit(default)

    # the operators
    def generic_visit(self, node):
        if isinstance(node, ast.JoinedStr):
            return  # f-strings: messages
        super().generic_visit(node)

    def visit_Call(self, node: ast.Call):
        name = call_name(node)
        if name in DISPLAY_CALLS or (name == "time" and isinstance(node.func, ast.Attribute)):
            return
        if isinstance(node.func, ast.Attribute) and not node.args and not node.keywords:
            start, end = self.span(node)
            receiver_end = self.span(node.func.value)[1]
            if name == "detach":
                self.add(receiver_end, end, "")
            elif name in ("train", "eval"):
                self.add(end - len(name) - 2, end - 2, "eval" if name == "train" else "train")
            elif name == "no_grad":
                self.add(start, end, NULL_CONTEXT)
        if self.kind == "function":
            self.remove_arguments(node)
            self.swap_arguments(node)
        self.visit(node.func)
        for a in node.args:
            self.visit(a)
        for k in node.keywords:
            if k.arg not in DISPLAY_KEYWORDS:
                self.visit(k.value)

    def visit_Dict(self, node: ast.Dict):
        for key, value in zip(node.keys, node.values):
            if isinstance(key, ast.Constant) and key.value in TIMING_KEYS:
                continue
            if key is not None:
                self.visit(key)
            self.visit(value)

    def visit_If(self, node: ast.If):
        test = node.test  # torchrun-only: one of TORCHRUN_ONLY, alone or in an `and`
        parts = test.values if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And) \
            else [test]
        torchrun = any(ast.unparse(part) in TORCHRUN_ONLY for part in parts)
        if ast.unparse(test) not in UNTESTED_BRANCHES and not torchrun:
            self.visit(test)
        for statement in ([] if torchrun else node.body) + node.orelse:
            self.visit(statement)  # (a torchrun-only body: test_distributed.py's domain)

    def visit_BinOp(self, node: ast.BinOp):
        if any(isinstance(n, ast.Call) and call_name(n) == "time" for n in ast.walk(node)):
            return  # timing
        if type(node.op) in ARITHMETIC:
            start = self.span(node.left)[1]
            self.add(*self.token_between(start, self.span(node.right)[0], SYMBOL[type(node.op)]),
                     ARITHMETIC[type(node.op)])
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign):
        value = node.value
        if isinstance(value, ast.Call) and call_name(value) == "detach" and not value.args:
            value = value.func.value  # an epoch's running sum: detach only frees the graph
        if type(node.op) in ARITHMETIC:
            symbol = SYMBOL[type(node.op)] + "="
            self.add(*self.token_between(self.span(node.target)[1], self.span(node.value)[0],
                                         symbol), ARITHMETIC[type(node.op)] + "=")
        self.visit(node.target)
        self.visit(value)

    def visit_Compare(self, node: ast.Compare):
        if ast.unparse(node) in TORCHRUN_ONLY:
            return
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            old, new = COMPARISON[type(op)]
            self.add(*self.token_between(self.span(left)[1], self.span(right)[0], old), new)
            left = right
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp):
        if isinstance(node.op, ast.USub):
            start = self.span(node)[0]
            self.add(start, start + 1, "")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant):
        value = node.value
        if isinstance(value, bool):
            new = [not value]
        elif isinstance(value, int):
            new = [value + 1, value - 1]
        elif isinstance(value, float) and value != 0:
            new = [value * 2, value * 0.5]
        else:
            return
        for v in new:
            self.add(*self.span(node), repr(v))

    # arguments, names and statements (the wiring): what a call gets, or loses
    def signature(self, call: ast.Call):
        """The callee's signature where the call names a module-level object (a function or
        class of the project, torch's Python functions and modules); None otherwise."""
        names = call.func
        while isinstance(names, ast.Attribute):
            names = names.value
        if not isinstance(names, ast.Name) or names.id in self.scope:
            return None
        try:
            return inspect.signature(eval(ast.unparse(call.func), vars(self.module)))
        except Exception:  # noqa: BLE001 (a builtin without a signature, a local object)
            return None

    def remove_arguments(self, node: ast.Call):
        """Each keyword argument dropped, and the last positional one where the callee gives
        it a default: the callee's default then applies silently."""
        if any(isinstance(a, ast.Starred) for a in node.args):
            return
        items = sorted([*node.args, *[k for k in node.keywords if k.arg is not None]],
                       key=lambda n: self.span(n)[0])
        removable = [k for k in node.keywords
                     if k.arg not in (None, *DISPLAY_KEYWORDS, *DEVICE_KEYWORDS)]
        signature = self.signature(node) if node.args else None
        if signature is not None:
            parameters = [p for p in signature.parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            last = len(node.args) - 1
            if last < len(parameters) and parameters[last].default is not inspect.Parameter.empty:
                removable.append(node.args[last])
        for item in removable:
            j = items.index(item)
            if j > 0:
                start, end = self.span(items[j - 1])[1], self.span(item)[1]
            elif len(items) > 1:
                start, end = self.span(item)[0], self.span(items[1])[0]
            else:
                start, end = self.span(item)
            self.add(start, end, "", "argument")

    def kinds(self, node) -> set:
        """What a value is, for the rule of "the same kind" (KINDS)."""
        if isinstance(node, ast.Name) and node.id in self.scope:
            return self.scope[node.id][1]
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.attr in self.fields.get(node.value.id, {})):
            return {("type", self.fields[node.value.id][node.attr])}
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return {("type", type(node.value).__name__)}
        return set()

    def swap_arguments(self, node: ast.Call):
        """Every pair of positional arguments of the same type swapped: by the callee's
        annotations where it has them, else by KINDS."""
        args = node.args
        if any(isinstance(a, ast.Starred) for a in args) or len(args) < 2:
            return
        signature = self.signature(node)
        annotations = []
        if signature is not None:
            annotations = [str(p.annotation) if p.annotation is not inspect.Parameter.empty
                           else "" for p in signature.parameters.values()
                           if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        for i in range(len(args)):
            for j in range(i + 1, len(args)):
                a, b = args[i], args[j]
                if self.source(a) == self.source(b):
                    continue
                typed = j < len(annotations) and annotations[i] and annotations[i] == annotations[j]
                if not (typed or self.kinds(a) & self.kinds(b)):
                    continue
                (start, a_end), (b_start, end) = self.span(a), self.span(b)
                between = self.text[a_end:b_start]
                self.add(start, end, self.source(b) + between + self.source(a), "swap")

    def visit_Name(self, node: ast.Name):
        """A read of a local name replaced by each other local of the same kind bound
        before it (KINDS)."""
        if not (isinstance(node.ctx, ast.Load) and node.id in self.scope) or any(
                node.id in names for names in self.nested):
            return
        mine = self.scope[node.id][1]
        for other, (line, kinds) in sorted(self.scope.items()):
            if other != node.id and line < node.lineno and kinds & mine:
                self.add(*self.span(node), other, "name")

    def visit_Attribute(self, node: ast.Attribute):
        """A read of a settings field (args.epochs) replaced by each other field of the same
        type of the same dataclass (args.schedule_epochs)."""
        base = node.value
        fields = self.fields.get(base.id, {}) if isinstance(base, ast.Name) else {}
        if isinstance(node.ctx, ast.Load) and node.attr in fields and self.kind == "function":
            for other, kind in sorted(fields.items()):
                if other != node.attr and kind == fields[node.attr]:
                    self.add(*self.span(node), f"{base.id}.{other}", "name")
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript):
        """A read of a string key (checkpoint["ema"]) replaced by each other key the file
        reads or sets on a container of the same name (checkpoint["model"])."""
        key, base = node.slice, node.value
        if (isinstance(node.ctx, ast.Load) and isinstance(base, ast.Name) and self.kind ==
                "function" and isinstance(key, ast.Constant) and isinstance(key.value, str)):
            for other in sorted(self.keys.get(base.id, set()) - {key.value}):
                self.add(*self.span(key), repr(other), "name")
        self.generic_visit(node)

    def visit_Lambda(self, node: ast.Lambda):
        self.nested.append({a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)})
        try:
            self.generic_visit(node)
        finally:
            self.nested.pop()

    def visit_comprehension_scope(self, node):
        self.nested.append({n.id for g in node.generators for n in ast.walk(g.target)
                            if isinstance(n, ast.Name)})
        try:
            self.generic_visit(node)
        finally:
            self.nested.pop()

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = \
        visit_comprehension_scope

    def delete(self, node: ast.stmt):
        """A statement with a side effect deleted: a call made for its effect (a state load,
        .eval(), .step(), an update, a seed, an append), or a write into an object's
        attribute or item (a piece of state set or saved)."""
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            call = node.value
            if call_name(call) in DISPLAY_CALLS or call_name(call) in NOT_DELETED:
                return
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            parts = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
            if not all(isinstance(e, (ast.Attribute, ast.Subscript)) for e in parts):
                return
            if self.where.endswith(".__init__") and all(  # a module's parts: built, not state
                    isinstance(e, ast.Attribute) and ast.unparse(e.value) == "self" for e in parts):
                return
        else:
            return
        start, end = self.span(node)
        self.add(start, end, "pass" + "\n" * self.text.count("\n", start, end), "statement")


def mutants_of(files) -> list[Mutant]:
    return [m for f in files for m in Generator(f, SCOPE[f]).run()]


def mutated_text(m: Mutant) -> str:
    text = (ROOT / m.file).read_text()
    return text[:m.start] + m.new + text[m.end:]


# ----------------------------------------------------------------------------------------
# Which tests run which code: a trace hook during one pytest run
# ----------------------------------------------------------------------------------------


def code_keys(files) -> dict:
    """{code object: "file:where"} of the in-scope functions, their nested functions and
    lambdas, and each Args class's generated __init__."""
    keys = {}

    def walk(code, key):
        keys[code] = key
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                walk(const, key)

    for file in files:
        module = importlib.import_module(file[:-3])
        for name in SCOPE[file]:
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                walk(inspect.unwrap(obj).__code__, f"{file}:{name}")
            elif inspect.isclass(obj):
                for attr, value in vars(obj).items():
                    if inspect.isfunction(value):
                        generated = name == "Args" and attr == "__init__"
                        walk(inspect.unwrap(value).__code__,
                             f"{file}:Args" if generated else f"{file}:{name}.{attr}")
    return keys


class Recorder:
    """pytest plugin: per test, its duration and the in-scope functions it called."""

    def __init__(self, files):
        self.files, self.keys, self.current, self.fixtures, self.tests = files, {}, set(), {}, {}

    def trace(self, frame, event, arg):
        key = self.keys.get(frame.f_code)
        if key is None:
            return None  # no line events outside the scope
        self.current.add(key)
        file = key.split(":")[0]

        def line(frame, event, arg):  # and each line it runs, as "file:number"
            if event == "line":
                self.current.add((file, frame.f_lineno))
            return line

        return line

    def pytest_collection_finish(self, session):
        self.keys = code_keys(self.files)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        outer, self.current = self.current, set()
        yield
        self.fixtures[id(fixturedef)] = self.current
        self.current = outer | self.current

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.current, started = set(), time.perf_counter()
        sys.settrace(self.trace)
        threading.settrace(self.trace)
        yield
        sys.settrace(None)
        threading.settrace(None)
        covered = set(self.current)
        for definitions in item._fixtureinfo.name2fixturedefs.values():
            for definition in definitions:  # a fixture's calls count for each of its users
                covered |= self.fixtures.get(id(definition), set())
        outcome = self.tests.get(item.nodeid, {}).get("outcome", "passed")
        covers = sorted(k if isinstance(k, str) else f"{k[0]}:{k[1]}" for k in covered)
        self.tests[item.nodeid] = {"seconds": time.perf_counter() - started,
                                   "covers": covers, "outcome": outcome}

    def pytest_runtest_logreport(self, report):
        if report.failed or (report.skipped and report.when in ("setup", "call")):
            self.tests.setdefault(report.nodeid, {})["outcome"] = report.outcome


def map_worker(test_files: list[str], files: list[str], out: str):
    """In a child process: run `test_files` under the Recorder, write what it saw to `out`."""
    import torch

    torch.set_num_threads(1)
    recorder = Recorder(files)
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-m", "not slow", *test_files],
                       plugins=[recorder])
    Path(out).write_text(json.dumps({"exit": int(code), "tests": recorder.tests}))


def test_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if str(p.relative_to(ROOT)) not in NOT_RUN)


def map_tests(jobs: int) -> dict:
    """{test node id: {"seconds", "covers"}} of the passing in-process tests; kept in the
    temporary folder for the next sweep of the same sources and tests."""
    digest = hashlib.sha256(b"lines")  # (what the map records)
    for path in sorted([*ROOT.glob("*.py"), *(ROOT / "tests").glob("*.py")]):
        if path.name == "sweep.py":
            continue
        digest.update(path.name.encode() + path.read_bytes())
    cache = Path(tempfile.gettempdir()) / f"sweep-map-{digest.hexdigest()[:16]}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    tests = _map_tests(jobs)
    cache.write_text(json.dumps(tests))
    return tests


def _map_tests(jobs: int) -> dict:
    groups = [[] for _ in range(jobs)]
    sizes = [0] * jobs
    for f in sorted(test_files(), key=lambda f: -(ROOT / f).stat().st_size):
        i = sizes.index(min(sizes))  # the file sizes stand in for the times
        groups[i].append(f)
        sizes[i] += (ROOT / f).stat().st_size
    with tempfile.TemporaryDirectory(prefix="sweep-map-") as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}
        processes = [subprocess.Popen(
            [sys.executable, __file__, "--map-worker", f"{tmp}/{i}.json", "--tests",
             *group], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for i, group in enumerate(groups) if group]
        tests = {}
        for i, process in enumerate(processes):
            _, err = process.communicate()
            result = json.loads(Path(f"{tmp}/{i}.json").read_text())
            if result["exit"] != 0:
                sys.exit(f"the tests do not pass on the unmutated code:\n{err.decode()[-2000:]}")
            tests.update({k: v for k, v in result["tests"].items() if v["outcome"] == "passed"})
    return tests


# ----------------------------------------------------------------------------------------
# One mutant: applied in a forked process, its tests run there
# ----------------------------------------------------------------------------------------


def resolve(module, qualname: str):
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part) if not isinstance(obj, dict) else obj[part]
    return obj


def apply(m: Mutant):
    """Put the mutant in place in this process's live modules."""
    module = importlib.import_module(m.file[:-3])
    fresh = types.ModuleType(module.__name__)
    fresh.__file__ = module.__file__
    sys.modules[module.__name__] = fresh  # while its code runs (dataclasses look it up)
    try:
        exec(compile(mutated_text(m), str(ROOT / m.file), "exec"), fresh.__dict__)
    finally:
        sys.modules[module.__name__] = module
    if m.kind == "class":
        setattr(module, m.where, getattr(fresh, m.where))
    elif m.kind == "table":
        for name in m.where.split(", "):
            setattr(module, name, getattr(fresh, name))
    else:
        live, new = resolve(module, m.where), resolve(fresh, m.where)
        if hasattr(live, "__wrapped__") and not hasattr(new, "__wrapped__"):  # no_grad removed
            cells = dict(zip(live.__code__.co_freevars, live.__closure__))
            cells["ctx_factory"].cell_contents = contextlib.nullcontext
            live = live.__wrapped__
        live, new = inspect.unwrap(live), inspect.unwrap(new)
        if live.__code__.co_freevars != new.__code__.co_freevars:
            raise RuntimeError(f"free variables differ: {live.__code__.co_freevars}")
        live.__code__, live.__defaults__, live.__kwdefaults__ = (
            new.__code__, new.__defaults__, new.__kwdefaults__)


def names_in_tests(tests: dict) -> dict:
    """{test node id: the names its test function's source mentions}."""
    sources = {}
    for file in {t.split("::")[0] for t in tests}:
        tree = ast.parse((ROOT / file).read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                sources[(file, node.name)] = {n.attr if isinstance(n, ast.Attribute) else n.id
                                              for n in ast.walk(node)
                                              if isinstance(n, (ast.Name, ast.Attribute))}
    return {t: sources.get((t.split("::")[0], t.split("::")[1].split("[")[0]), set())
            for t in tests}


class FirstFailure:
    """The first test that failed; and, in a file the sweep reads, the test running now and
    since when (a hang is told by the test, not by the mutant's whole run)."""

    def __init__(self, progress: Path):
        self.failed, self.progress = "", progress

    def pytest_runtest_logstart(self, nodeid, location):
        self.progress.write_text(json.dumps([nodeid, time.time()]))

    def pytest_runtest_logreport(self, report):
        if report.failed and not self.failed:
            self.failed = report.nodeid


def hung(progress: Path, tests: dict, started: float) -> bool:
    """The test a mutant's child runs has taken three times its mapped time plus 10 s (or
    the child has not reached a test 60 s after it started)."""
    try:
        nodeid, since = json.loads(progress.read_text())
    except (OSError, ValueError):
        return time.time() - started > 60
    return time.time() - since > 3 * tests.get(nodeid, {}).get("seconds", 20) + 10


def run_mutant(m: Mutant, tests: list[str], result: Path, basetemp: Path):
    """In the forked child: apply, run the tests, write the outcome; never returns."""
    status = {"status": "error", "detail": ""}
    try:
        log = os.open(str(result) + ".log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        try:
            apply(m)
        except Exception as error:  # noqa: BLE001 (a mutant that cannot be applied is reported)
            status["detail"] = f"could not apply: {type(error).__name__}: {error}"
        else:
            catcher = FirstFailure(Path(str(result) + ".progress"))
            code = pytest.main(["-x", "-q", *QUIET, "--basetemp", str(basetemp), *tests],
                               plugins=[catcher])
            if code == 0:
                status = {"status": "survived", "detail": ""}
            elif catcher.failed:  # a test failed (exit 1), or errored in its set-up
                status = {"status": "killed", "detail": catcher.failed}
            else:  # collection errors, usage errors: the sweep's fault, not the mutant's
                status["detail"] = f"pytest exit {int(code)}"
    finally:
        result.write_text(json.dumps(status))
        os._exit(0)


def sweep(mutants: list[Mutant], tests: dict, jobs: int, equivalent: dict, logs: str = "",
          recheck: bool = False) -> dict:
    """Run every mutant in a forked child, `jobs` at a time; returns {key: outcome}. A mutant
    in a function's body is run by the tests that ran its statement, others (a default, a
    decorator) by those that called its function, a table's by those that called a reader
    of it or name it."""
    import gc

    import torch

    torch.set_num_threads(1)
    for module in (*(file[:-3] for file in SCOPE), "lpips", "pytorch_fid.inception",
                   "sklearn.mixture", "sklearn.cluster", "sklearn.decomposition", "scipy.stats",
                   "torchvision.models"):
        importlib.import_module(module)
    # The random pretrained weights every run of the tests reads, written once.
    from fakes import write_random_alexnet, write_random_inception, write_random_vgg19

    home = tempfile.mkdtemp(prefix="sweep-torch-home-")
    for write in (write_random_inception, write_random_alexnet, write_random_vgg19):
        write(Path(home))
    os.environ["SWEEP_TORCH_HOME"] = home
    # Import the test modules once, here, so that each child finds them loaded; then freeze
    # what is loaded, so that the children's garbage collections skip it.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        pytest.main(["--collect-only", "-q", *QUIET, *sorted({t.split("::")[0] for t in tests})])
    gc.freeze()
    covering = {}
    for nodeid, t in tests.items():
        for key in t["covers"]:
            covering.setdefault(key, []).append(nodeid)
    named = names_in_tests(tests)
    plans = []
    for m in mutants:
        keys = ([f"{m.file}:{line}" for line in m.lines] if m.lines else
                [f"{m.file}:{m.where}"] if m.kind == "function" else
                [f"{m.file}:Args"] if m.kind == "class" else
                m.readers or [k for k in covering if k.startswith(f"{m.file}:")])
        chosen = {t for k in keys for t in covering.get(k, [])}
        if m.kind == "table":  # and the tests that name the table
            chosen |= {t for t in tests if set(m.where.split(", ")) & named[t]}
        chosen = sorted(chosen, key=lambda t: tests[t]["seconds"])
        plans.append((m, chosen, sum(tests[t]["seconds"] for t in chosen)))
    # record: {(file, where): {test: [mutants it killed, mutants it ran and passed]}}
    outcomes, running, record = {}, {}, {}
    queue = sorted(plans, key=lambda p: p[2])
    done, total, started, numbers = 0, len(queue), time.time(), iter(range(len(queue)))
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        while queue or running:
            while queue and len(running) < jobs:
                m, chosen, seconds = queue.pop(0)
                # Least expected time to the first failure: a test's seconds over its rate of
                # killing mutants of the same code so far, (kills + 1) / (runs + 2).
                seen = record.get((m.file, m.where), {})
                chosen = sorted(chosen, key=lambda t: tests[t]["seconds"] * (
                    sum(seen.get(t, [0, 0])) + 2) / (seen.get(t, [0, 0])[0] + 1))
                if not chosen:
                    outcomes[m.key] = {"status": "no tests", "detail": ""}
                    continue
                if m.key in equivalent and not recheck:
                    outcomes[m.key] = {"status": "survived", "detail": "listed, not run"}
                    continue
                index = next(numbers)
                result, basetemp = Path(tmp) / f"{index}.json", Path(tmp) / f"t{index}"
                pid = os.fork()
                if pid == 0:
                    run_mutant(m, chosen, result, basetemp)
                running[pid] = (m, result, basetemp, None, time.time(), chosen)
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                for pid, (m, result, basetemp, _, began, _) in list(running.items()):
                    if hung(Path(str(result) + ".progress"), tests, began):
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        outcomes[m.key] = {"status": "killed", "detail": "timeout"}
                        del running[pid]
                        done += 1
                time.sleep(0.05)
                continue
            m, result, basetemp, _, began, chosen = running.pop(pid)
            outcomes[m.key] = (json.loads(result.read_text()) if result.exists() else
                               {"status": "error", "detail": "the child died"})
            outcomes[m.key]["seconds"] = time.time() - began
            shutil.rmtree(basetemp, ignore_errors=True)
            if logs:
                Path(logs).mkdir(parents=True, exist_ok=True)
                shutil.copy(str(result) + ".log", Path(logs) / f"{result.stem}.log")
                with open(Path(logs) / f"{result.stem}.log", "a") as f:
                    f.write(f"\n{m.key}\n")
            done += 1
            o = outcomes[m.key]
            if o["status"] == "killed" and "::" in o["detail"]:
                seen = record.setdefault((m.file, m.where), {})
                for t in chosen[:chosen.index(o["detail"])] if o["detail"] in chosen else []:
                    seen.setdefault(t, [0, 0])[1] += 1
                seen.setdefault(o["detail"], [0, 0])[0] += 1
            if o["status"] != "killed" and not (o["status"] == "survived" and m.key in equivalent):
                print(f"  {o['status'].upper()}: {m.key}  {o['detail']}", flush=True)
            elif o.get("seconds", 0) > 120:
                print(f"  slow ({o['seconds']:.0f} s, {o['status']}): {m.key}", flush=True)
            if done % 50 == 0:
                print(f"  {done} of {total} mutants, {time.time() - started:.0f} s", flush=True)
    shutil.rmtree(home, ignore_errors=True)
    return outcomes


# ----------------------------------------------------------------------------------------
# The equivalence list and the report
# ----------------------------------------------------------------------------------------


def read_equivalent() -> dict:
    """{mutant key: reason} from tests/equivalent.txt: a key line, then indented reason
    lines; '#' lines are comments."""
    entries, key = {}, None
    for line in EQUIVALENT.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith((" ", "\t")):
            entries[key] = (entries[key] + " " + line.strip()).strip()
        else:
            key = line.strip()
            entries[key] = ""
    return entries


def in_a_copy(args) -> int:
    """Run this sweep on a copy of the tree (what `git ls-files` lists, and new files git
    does not ignore), so that the checkout can change while it runs."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory(prefix="sweep-tree-") as copy:
        for name in listed.splitlines():
            if (ROOT / name).is_file():
                (Path(copy) / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, Path(copy) / name)
        argv = [*args.files, "--jobs", str(args.jobs), "--match", args.match,
                *(["--recheck"] if args.recheck else []),
                *(["--logs", str(Path(args.logs).resolve())] if args.logs else []),
                *(["--json", str(Path(args.json).resolve())] if args.json else [])]
        return subprocess.run([sys.executable, str(Path(copy) / "tests" / "sweep.py"), *argv],
                              cwd=copy, env={**os.environ, "SWEEP_COPY": "1"}).returncode


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help=f"files to sweep (default: {', '.join(SCOPE)})")
    parser.add_argument("--list", action="store_true", help="print the mutants and stop")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--match", default="", help="only the mutants whose key holds this text")
    parser.add_argument("--recheck", action="store_true",
                        help="also run the mutants equivalent.txt lists (they must survive)")
    parser.add_argument("--logs", default="", help="keep each mutant's pytest output here")
    parser.add_argument("--json", default="", help="write every mutant's outcome to this file")
    parser.add_argument("--map-worker", help=argparse.SUPPRESS)
    parser.add_argument("--tests", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    files = args.files or list(SCOPE)
    unknown = [f for f in files if f not in SCOPE]
    if unknown:
        parser.error(f"not in SCOPE: {', '.join(unknown)}")
    if args.map_worker:
        map_worker(args.tests, list(SCOPE), args.map_worker)
        return
    if not args.list and not os.environ.get("SWEEP_COPY"):
        sys.exit(in_a_copy(args))
    mutants = [m for m in mutants_of(files) if args.match in m.key]
    if args.list:
        for m in mutants:
            print(m.key)
        print(f"{len(mutants)} mutants")
        return
    equivalent = read_equivalent()
    started = time.time()
    print(f"{len(mutants)} mutants of {', '.join(files)}; mapping the tests ...", flush=True)
    tests = map_tests(args.jobs)
    print(f"{len(tests)} tests mapped in {time.time() - started:.0f} s; running the mutants, "
          f"{args.jobs} at a time ...", flush=True)
    outcomes = sweep(mutants, tests, args.jobs, equivalent, args.logs, args.recheck)
    print(f"\n| file | mutants | killed | equivalent (listed) | survived | no tests | errors |")
    print("|---|---|---|---|---|---|---|")
    bad = []
    for file in files + ["all"]:
        mine = [m for m in mutants if file in ("all", m.file)]
        counts = {"killed": 0, "equivalent": 0, "survived": 0, "no tests": 0, "error": 0}
        for m in mine:
            status = outcomes[m.key]["status"]
            if status == "survived" and m.key in equivalent:
                status = "equivalent"
            counts[status] += 1
            if status in ("survived", "no tests", "error") and file != "all":
                bad.append((m.key, outcomes[m.key]))
        print(f"| {file} | {len(mine)} | " + " | ".join(str(c) for c in counts.values()) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(outcomes, indent=1))
    keys = {m.key for m in mutants}
    swept = set(files)
    stale = [k for k in equivalent if k.split(" | ")[0] in swept and k not in keys
             and not args.match]
    killed_listed = [m.key for m in mutants if m.key in equivalent
                     and outcomes[m.key]["status"] == "killed"]
    print(f"\nsweep time {time.time() - started:.0f} s")
    for key, outcome in bad:
        print(f"{outcome['status'].upper()}: {key}  {outcome['detail']}")
    for key in stale:
        print(f"STALE (matches no mutant): {key}")
    for key in killed_listed:
        print(f"LISTED BUT KILLED (remove it from equivalent.txt): {key}")
    sys.exit(1 if bad or stale or killed_listed else 0)


if __name__ == "__main__":
    main()
