"""The model side of ``laser eval`` / ``laser score``: a model folder loaded with its tokenizer, stop ids and
self-reward score parameters (``laser.json``, overridable by flags), and the fingerprint that ties an
evaluation folder's samples to the model that produced them.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laser_rl.errors import LaserError
from laser_rl.score_params import ScoreParams

__all__ = ["ScoringModel", "load_scoring_model", "model_fingerprint"]


@dataclass
class ScoringModel:
    """A model ready for sampling/scoring: ids derived from its tokenizer and folder, never hard-coded."""

    model: Any
    tokenizer: Any
    folder: Path
    params: ScoreParams | None  # None: no self-reward token (scores are reported as 0)
    stop_ids: list[int]
    pad_id: int
    suppress_ids: list[int]
    saved: ScoreParams | None  # laser.json as found in the folder (None when absent)
    engine_name: str = "hf"  # the generation engine (laser_rl.rollout.engine.ENGINES)
    _engine: Any = field(default=None, repr=False)

    def engine(self) -> Any:
        """The generation engine on this model (built once), reading lp_z when there is a score."""
        if self._engine is None:
            from laser_rl.rollout.engine import build_engine

            z_id = self.params.token_id if self.params is not None else None
            self._engine = build_engine(self.engine_name, self.model, pad_id=self.pad_id, stop_ids=self.stop_ids,
                                        z_id=z_id, suppress_ids=self.suppress_ids)
        return self._engine


def _float_flag(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value):
        raise LaserError(f"{name} must be a finite number, got {value}")
    return float(value)


def load_scoring_model(
    model_dir: str | os.PathLike[str],
    *,
    token: str | None = None,
    beta_v: float | None = None,
    c_ref: float | None = None,
    device: str | None = None,
    dtype: str = "auto",
    force_token: bool = False,
) -> ScoringModel:
    """Load model + tokenizer and resolve z, β_v, c_ref: flags override ``laser.json``; a folder
    without ``laser.json`` needs all three flags (no silent default). z is checked on the tokenizer
    before the model loads; ``force_token`` accepts an ordinary or used token as z."""
    from laser_rl.integrations.hf import check_model_folder, load_model, load_tokenizer, resolve_stop_ids
    from laser_rl.integrations.special_token import validate_token_id
    from laser_rl.rollout.engine import never_sampled_ids
    from laser_rl.rollout.sampler import vocab_size

    folder = check_model_folder(model_dir)
    beta_v = _float_flag(beta_v, "--beta-v")
    c_ref = _float_flag(c_ref, "--c-ref")
    if beta_v is not None and beta_v <= 0:
        raise LaserError(f"--beta-v must be > 0, got {beta_v}")
    saved = ScoreParams.load(folder)
    if saved is None:
        missing = [flag for flag, v in (("--token", token), ("--beta-v", beta_v), ("--c-ref", c_ref)) if v is None]
        if missing:
            raise LaserError(
                f"{folder} has no score parameters (laser.json) and {', '.join(missing)} "
                f"{'was' if len(missing) == 1 else 'were'} not given: pass --token, --beta-v and --c-ref "
                "(measure c_ref with `laser calibrate`)"
            )
    elif c_ref is None:  # scoring with the file's c_ref: refuse a score this command cannot compute
        saved.require_constant_reference(str(folder / "laser.json"))
    tokenizer = load_tokenizer(folder)
    saved_stops = saved.extra.get("stop_ids", []) if saved is not None else []
    if not isinstance(saved_stops, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in saved_stops):
        raise LaserError(f"{folder / 'laser.json'}: extra.stop_ids must be a list of token ids, got {saved_stops!r}")
    stop_ids = resolve_stop_ids(tokenizer, saved_stops, model_path=folder)
    pad_id = int(tokenizer.pad_token_id)

    token_str, z_id = _self_reward_token(tokenizer, token, saved, stop_ids, folder, force_token)
    model = load_model(folder, dtype=dtype, device=device)  # after the cheap checks
    vocab = vocab_size(model)
    validate_token_id(z_id, vocab, stop_ids, pad_id)
    params = ScoreParams(
        token=token_str,
        token_id=int(z_id),
        beta_v=beta_v if beta_v is not None else saved.beta_v,  # type: ignore[union-attr]
        c_ref=c_ref if c_ref is not None else saved.c_ref,  # type: ignore[union-attr]
        c_ref_std=saved.c_ref_std if saved is not None and c_ref is None else None,
        extra=dict(saved.extra) if saved is not None else {},
    )
    suppress = never_sampled_ids(len(tokenizer), vocab, stop_ids, pad_id)
    return ScoringModel(model, tokenizer, folder, params, stop_ids, pad_id, suppress, saved)


def _self_reward_token(
    tokenizer: Any, token: str | None, saved: ScoreParams | None, stop_ids: list[int], folder: Path, force_token: bool
) -> tuple[str, int]:
    """z and its id: ``--token`` checked on the tokenizer, else laser.json's, which must name the
    tokenizer's token of that id."""
    from laser_rl.integrations.special_token import parse_token_arg, select_self_reward_token

    if token is not None:
        token_str, z_id, _ = select_self_reward_token(
            tokenizer, parse_token_arg(token), stop_ids=stop_ids, force=force_token,
            force_option="--force-token", add_option=None,
        )
        return token_str, z_id
    assert saved is not None  # load_scoring_model asks for --token without laser.json
    name = tokenizer.convert_ids_to_tokens(saved.token_id) if 0 <= saved.token_id < len(tokenizer) else None
    if name is not None and name != saved.token:
        raise LaserError(
            f"{folder / 'laser.json'}: token {saved.token!r} has id {saved.token_id}, but the tokenizer's token "
            f"{saved.token_id} is {name!r}; fix laser.json or pass --token"
        )
    return saved.token, saved.token_id


def model_fingerprint(folder: str | os.PathLike[str]) -> str:
    """A cheap identity of a model folder's weights: config.json plus, per weight file, its name,
    size and the SHA-256 of its first and last MiB (a full hash of a 15 GB model costs minutes)."""
    h = hashlib.sha256()
    root = Path(folder)
    files = sorted(p for p in root.iterdir() if p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name == "config.json"))
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.name}:{size}:".encode())
        with p.open("rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read(1 << 20))
    return h.hexdigest()[:16]
