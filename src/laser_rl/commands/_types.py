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

#: ``--dtype`` values every command accepts (the config's model.dtype uses the long names).
DTYPES = ("auto", "float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DTYPE_HELP = (
    "auto (bfloat16 on a CUDA GPU that supports it, else float32), float32, bfloat16, float16 (aliases fp32, bf16, fp16)"
)


def dtype_name(text: str) -> str:
    """A ``--dtype`` value → its long name (``bf16`` → ``bfloat16``)."""
    name = DTYPE_ALIASES.get(text.lower(), text.lower())
    if name not in DTYPES:
        choices = ", ".join([*DTYPES, *DTYPE_ALIASES])
        raise argparse.ArgumentTypeError(f"expected one of {choices}, got {text!r}")
    return name
