"""The self-reward score's parameters (z, β_v, c_ref), saved beside a model as ``laser.json``.

``laser base`` and ``laser train`` write this file into every model folder they save, so that
``laser eval`` / ``laser score`` / ``laser calibrate`` can read the score without flags.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from laser_rl.errors import LaserError
from laser_rl.io import write_json_atomic

FILENAME = "laser.json"


@dataclass
class ScoreParams:
    token: str = field(metadata={"help": "the self-reward token z as text (a special token)"})
    token_id: int = field(metadata={"help": "the id of z in the model's tokenizer"})
    beta_v: float = field(metadata={"help": "score scale β_v in r_s = β_v·(log π(z|x,y,EOS) − c_ref)"})
    c_ref: float = field(metadata={"help": "reference constant c_ref (mean log π_ref(z|x,y,EOS))"})
    c_ref_std: float | None = field(default=None, metadata={"help": "std of the c_ref measurement"})
    extra: dict[str, Any] = field(default_factory=dict, metadata={"help": "anything else worth keeping"})

    def __post_init__(self) -> None:
        if not (isinstance(self.beta_v, (int, float)) and self.beta_v > 0 and math.isfinite(self.beta_v)):
            raise LaserError(f"beta_v must be a positive finite number, got {self.beta_v!r}")
        if not (isinstance(self.c_ref, (int, float)) and math.isfinite(self.c_ref)):
            raise LaserError(f"c_ref must be a finite number, got {self.c_ref!r}")

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
