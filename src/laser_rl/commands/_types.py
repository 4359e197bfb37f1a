"""argparse value types shared by the subcommands: each names what it expected in its error."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", int, float)


def _number(parse: Callable[[str], T], ok: Callable[[T], bool], requirement: str) -> Callable[[str], T]:
    def convert(text: str) -> T:
        try:
            value = parse(text)
        except ValueError:
            kind = "an integer" if parse is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return convert


positive_int = _number(int, lambda v: v >= 1, ">= 1")
finite_float = _number(float, math.isfinite, "finite")
probability = _number(float, lambda v: 0.0 < v <= 1.0, "in (0, 1]")
non_negative_float = _number(float, lambda v: 0.0 <= v < math.inf, "a finite number >= 0")
