"""The training precision contract: float32 master weights, compute in ``model.dtype``.

AdamW updates of bf16 weights round away at the paper's lr (1e-6): a bf16 weight of magnitude ~1
moves only by steps of 2^-8. So the trainer always keeps float32 weights and optimizer state, and
runs the forwards (training, rollouts, c_ref calibration) in ``model.dtype``: through
``torch.autocast`` in one process or under DDP, through FSDP2's ``MixedPrecisionPolicy`` when
sharded. ``model.dtype: auto`` is resolved by :func:`laser_rl.integrations.hf.resolve_dtype`, the one
rule for it (bfloat16 on a CUDA device that supports it, float32 otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    weights: torch.dtype  # parameters, gradients and optimizer state
    compute: torch.dtype  # forward passes

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype to autocast forwards to (None: the weights' own dtype, no autocast)."""
        return None if self.compute == self.weights else self.compute


def training_precision(model_dtype: str | torch.dtype, device: str | torch.device | None) -> Precision:
    """Float32 weights; ``model_dtype`` (``auto`` resolved for ``device``) for the forwards."""
    from laser_rl.integrations.hf import resolve_dtype

    return Precision(weights=torch.float32, compute=resolve_dtype(model_dtype, device))
