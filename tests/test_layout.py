"""The reference's layout, for the student who reads and copies it: common.py in three parts,
the first naming nothing from the other two; no method called by name from common.py; each
method file saying what it takes from common.py; and the README's recipe for a copy of the
DAE, followed here: part one of common.py and dae.py's method, with the README's loop, train
on digits for an epoch and take dae.py's very first step."""
import ast
import re
import sys
import types

import pytest
import torch

import dae
from conftest import ROOT

METHODS = ("dae", "vae", "rae", "eae", "iae_lde", "deciphering")


def parts() -> list[list[ast.stmt]]:
    """common.py's top-level statements, by the part (banner) they stand under."""
    text = (ROOT / "common.py").read_text()
    banners = [i + 1 for i, line in enumerate(text.splitlines())
               if re.match(r"# === [123]\. ", line)]
    assert len(banners) == 3 and [text.splitlines()[b - 1][6] for b in banners] == list("123")
    grouped = [[], [], []]
    for node in ast.parse(text).body:
        if node.lineno > banners[0]:
            grouped[sum(node.lineno > b for b in banners) - 1].append(node)
    return grouped


def defined(nodes) -> set:
    """The names the statements define at the top level."""
    names = set()
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def test_part_one_of_common_names_nothing_from_parts_two_and_three():
    one, two, three = parts()
    later = defined(two) | defined(three)
    assert {"world", "is_main", "CHECKPOINT", "new_run_folder", "Inception"} <= later
    used = set()
    for node in one:  # the names each definition reads and does not bind itself
        local = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and
                 isinstance(n.ctx, ast.Store)} | {a.arg for a in ast.walk(node)
                                                   if isinstance(a, ast.arg)}
        used |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} - local
    assert not used & later, sorted(used & later)
    assert {"load_images", "batches", "Encoder", "Decoder", "fit_samplers",
            "daly_learning_rate", "encode_all", "sample", "decode", "UserError"} <= defined(one)


def test_common_calls_no_method_file_by_name():
    tree = ast.parse((ROOT / "common.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in (node.names if isinstance(node, ast.Import) else
                              [ast.alias(node.module or "")])}
    assert not imported & set(METHODS)
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    for call in calls:  # importlib only with a name read from a run, never a literal
        if getattr(call.func, "attr", "") == "import_module":
            assert not isinstance(call.args[0], ast.Constant)
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value == "fake"]


def test_each_method_file_says_what_it_takes_from_common():
    for name in METHODS:
        doc = ast.get_docstring(ast.parse((ROOT / f"{name}.py").read_text()))
        assert "From common.py:" in doc and "Needs common.py" not in doc, name


def readme_copy() -> str:
    """The loop of the README's "Copying a method into your own code", as written."""
    section = (ROOT / "README.md").read_text().split("## Copying a method into your own code")[1]
    block = section.split("\n```python\n")[1].split("\n```")[0]
    return block


def segment(text: str, node) -> str:
    """A top-level definition's source, decorators included."""
    lines = text.splitlines()
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "\n".join(lines[first - 1:node.end_lineno])


def the_copy() -> str:
    """The copy the README describes, built from the files: common.py's imports and part one,
    its `arg`, then dae.py's model and loss without their `common.` prefixes."""
    text = (ROOT / "common.py").read_text()
    header = text[text.index("from __future__"):text.index("# === 1.")]
    one = text[text.index("# === 1."):text.index("# === 2.")]
    (arg,) = [segment(text, n) for n in ast.parse(text).body if getattr(n, "name", "") == "arg"]
    source = (ROOT / "dae.py").read_text()
    method = [segment(source, n) for n in ast.parse(source).body if getattr(n, "name", "") in
              ("Args", "latent_layer", "without_batch_norm", "DAE", "reconstruction_loss")]
    return "\n\n\n".join([header + "from dataclasses import dataclass\n", one, arg,
                          *method]).replace("common.", "")


def test_the_readmes_copy_of_the_dae_trains_as_dae_py(tmp_path, monkeypatch):
    """One epoch on digits (the README's settings but the epochs): the copy's first step has
    dae.py's first-step loss, and it ends with GMM samples in [0, 1]."""
    loop = readme_copy().replace("epochs=40", "epochs=1")
    assert "common." not in loop and "args = Args(" in loop
    module = types.ModuleType("copy_dae")  # (dataclasses look their module up)
    monkeypatch.setitem(sys.modules, "copy_dae", module)
    namespace = module.__dict__
    exec(compile(the_copy(), str(tmp_path / "copy_dae.py"), "exec"), namespace)
    losses, real = [], namespace["reconstruction_loss"]
    namespace["reconstruction_loss"] = lambda *a: losses.append(real(*a)) or losses[-1]
    exec(compile(loop, str(tmp_path / "loop.py"), "exec"), namespace)
    copied = losses[0].item()
    assert len(losses) == 1500 // 64 and namespace["samples"].shape == (64, 1, 32, 32)
    assert 0 <= namespace["samples"].min() and namespace["samples"].max() <= 1

    class Enough(Exception):
        pass

    first = []
    monkeypatch.setattr(dae, "reconstruction_loss", lambda *a: first.append(
        torch.nn.functional.binary_cross_entropy_with_logits(a[0].float(), a[1])) or (
        _ for _ in ()).throw(Enough))
    settings = re.search(r"args = Args\((.*)\)", loop).group(1)
    args = eval(f"dae.Args({settings}, device='cpu', out_dir=r'{tmp_path / 'runs'}')")
    with pytest.raises(Enough):
        dae.train(args, set())
    assert copied == first[0].item()
