"""The self-reward score's owner: its parameters (z, β_v, c_ref or a reference model), the score
itself, and ``laser.json``, the file that carries them beside a model.

Everything that turns lp_z = log π(z | x, y, EOS) into a score calls :meth:`ScoreParams.score`
(the sampler and the trainer produce lp_z; training, evaluation and the TRL adapter consume the
score), and every β_v comes from :func:`resolve_beta_v`. ``laser base`` and ``laser train`` write
``laser.json`` into every model folder they save, so that ``laser eval`` / ``laser score`` /
``laser calibrate`` read the score without flags.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from laser_rl.core import HIGH_TARGET_LOGPROB, correct_target_logprob, derive_beta_v
from laser_rl.errors import LaserError
from laser_rl.io import write_json_atomic

if TYPE_CHECKING:
    from torch import Tensor

FILENAME = "laser.json"
REFERENCES = ("constant", "model")
__all__ = ["FILENAME", "HIGH_TARGET_LOGPROB", "REFERENCES", "ScoreParams", "resolve_beta_v"]


@dataclass
class ScoreParams:
    token: str = field(metadata={"help": "the self-reward token z as text (a special token)"})
    token_id: int = field(metadata={"help": "the id of z in the model's tokenizer"})
    beta_v: float = field(metadata={"help": "score scale β_v in r_s = β_v·(log π(z|x,y,EOS) − c_ref)"})
    c_ref: float = field(metadata={"help": "reference constant c_ref (mean log π_ref(z|x,y,EOS))"})
    c_ref_std: float | None = field(default=None, metadata={"help": "std of the c_ref measurement"})
    extra: dict[str, Any] = field(default_factory=dict, metadata={"help": "anything else worth keeping"})
    reference: Literal["constant", "model"] = field(
        default="constant",
        metadata={"help": "constant: r_s uses c_ref; model: r_s uses log π_ref(z|x,y,EOS) of a frozen reference model"},
    )

    def __post_init__(self) -> None:
        if not (isinstance(self.beta_v, (int, float)) and self.beta_v > 0 and math.isfinite(self.beta_v)):
            raise LaserError(f"beta_v must be a positive finite number, got {self.beta_v!r}")
        if not (isinstance(self.c_ref, (int, float)) and math.isfinite(self.c_ref)):
            raise LaserError(f"c_ref must be a finite number, got {self.c_ref!r}")
        if self.reference not in REFERENCES:
            raise LaserError(f"reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}")

    # ---------------------------------------------------------------------------------- the score

    @property
    def target_logprob(self) -> float:
        """The log π(z | x, y, EOS) the MSE asks of a correct response: c_ref + 1/β_v."""
        return correct_target_logprob(self.c_ref, self.beta_v)

    def score(self, lp_z: Tensor, ref_lp_z: Tensor | None = None, finished: Tensor | None = None) -> Tensor:
        """r_s = β_v·(lp_z − c_ref), or β_v·(lp_z − lp_z_ref) with a reference model (paper Eq. 12).

        ``lp_z`` ``[B]`` float32 (NaN where a row has no EOS). With ``finished`` ``[B]`` bool, rows that
        did not finish score 0 — they have no EOS, hence no score, and are predicted incorrect and
        carry no vote (:func:`laser_rl.core.laser.unfinished_score_zero`, the rule's owner).
        """
        from laser_rl.core import laser as core

        if self.reference == "model":
            if ref_lp_z is None:
                raise LaserError("the score uses a reference model (reference: model) but no reference lp_z was given")
            s = core.self_reward_score_with_reference(lp_z, ref_lp_z, self.beta_v)
        else:
            s = core.self_reward_score(lp_z, self.beta_v, self.c_ref)
        return s if finished is None else core.unfinished_score_zero(s, finished)

    def require_constant_reference(self, what: str) -> None:
        """Refuse to score a ``reference: model`` run with the constant c_ref (a silent switch)."""
        if self.reference == "model":
            raise LaserError(
                f"{what}: this model was trained with laser.reference=model (r_s = β_v·(lp_z − lp_z_ref) with "
                "a frozen reference model), which this command cannot compute; pass --c-ref C to score with a "
                "constant instead (measure C with `laser calibrate` on the reference model)"
            )

    # ---------------------------------------------------------------------------------- laser.json

    def save(self, folder: str | Path) -> None:
        write_json_atomic(Path(folder) / FILENAME, asdict(self))

    @classmethod
    def load(cls, folder: str | Path) -> ScoreParams | None:
        """Read ``folder/laser.json``; ``None`` when the folder has none."""
        path = Path(folder) / FILENAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as e:
            raise LaserError(f"{path}: invalid score parameters ({e})") from None
        except LaserError as e:
            raise LaserError(f"{path}: {e}") from None


def resolve_beta_v(
    beta_v: float | str, c_ref: float, target_logprob: float, what: str = "beta_v", target_what: str = "target_logprob"
) -> float:
    """β_v from a setting: a positive number as is, or ``"auto"`` = 1/(target_logprob − c_ref), which puts
    a correct response's target log π(z) = c_ref + 1/β_v at ``target_logprob`` (core.derive_beta_v).

    The paper's β_v = 0.1 assumes c_ref ≈ −23; with c_ref ≈ −12 it would ask for log π(z) = −2, making z
    a likely token: ``auto`` keeps it improbable whatever the model. ``what`` / ``target_what`` name the
    settings in errors.
    """
    if beta_v != "auto":
        value = float(beta_v)
        if not (math.isfinite(value) and value > 0):
            raise LaserError(f"{what} must be a positive number or auto, got {beta_v!r}")
        return value
    if not target_logprob > c_ref:
        raise LaserError(
            f"{what}=auto needs {target_what} ({target_logprob:g}) above c_ref ({c_ref:g}): z is not an "
            "improbable token on this model, so no β_v keeps it improbable"
        )
    return derive_beta_v(c_ref, target_logprob)
