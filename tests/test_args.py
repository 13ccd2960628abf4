"""The Args dataclass -> argparse helper of common.py."""
from dataclasses import dataclass

import pytest

from common import arg, build_parser, parse_args


@dataclass
class Args:
    name: str = arg("cifar10", "data set", choices=("cifar10", "digits"))
    epochs: int = arg(100, "training epochs", low=1)
    lr: float = arg(1e-3, "learning rate", low=0)
    flip: bool = arg(False, "random flips")
    depth: list[int] = arg([1], "convs per stage", low=1)
    entropy_weight: float = arg(0.05, "lambda", low=0)


def test_defaults_and_help():
    args, given = parse_args(Args, [])
    assert args == Args() and given == set()
    text = build_parser(Args).format_help()
    for flag, default in [("--name", "cifar10"), ("--epochs", "100"), ("--lr", "0.001"),
                          ("--flip", "False"), ("--depth", "[1]")]:
        assert flag in text and f"(default: {default})" in text
    assert "training epochs" in text and "{cifar10,digits}" in text


def test_values_of_every_kind():
    args, given = parse_args(Args, ["--name", "digits", "--epochs", "3", "--lr", "5e-4",
                                    "--flip", "--depth", "3", "3", "2", "1"])
    assert args == Args("digits", 3, 5e-4, True, [3, 3, 2, 1], 0.05)
    assert given == {"name", "epochs", "lr", "flip", "depth"}
    assert parse_args(Args, ["--flip", "--no-flip"])[0].flip is False


def test_an_old_name_of_an_option_is_no_option():
    """Renamed options keep no alias (a run written with one: test_lifecycle.py)."""
    with pytest.raises(SystemExit):
        parse_args(Args, ["--reg-weight", "0.3"])


def test_list_default_not_shared():
    a, b = Args(), Args()
    a.depth.append(2)
    assert b.depth == [1]


@pytest.mark.parametrize("argv, message", [
    (["--name", "imagenet"], "invalid choice"),
    (["--epochs", "many"], "invalid int value"),
    (["--epochs", "0"], "must be at least 1"),
    (["--lr", "-1"], "must be at least 0"),
    (["--depth", "3", "x"], "invalid int value"),
    (["--unknown"], "unrecognized arguments"),
])
def test_bad_values_rejected(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(Args, argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
