"""Checkpoints: a ``save_pretrained`` model folder plus the trainer state, written atomically.

Layout of ``<output_dir>/checkpoints/step-000050/``: the model's ``config.json`` + weights, the
tokenizer files, ``laser.json`` (score parameters), ``task.json`` when the base model had one, and
``trainer_state.{json,safetensors}`` (optimizer, scheduler, step, data position, guard state) plus
one ``rng-rank<r>.{json,safetensors}`` per process. Under FSDP2 the sharded model and optimizer
tensors go to ``sharded/`` instead (``save_sharded_state``: every rank writes its own shards).
A folder is written under a hidden temporary name and renamed when complete, so every ``step-*``
folder is a complete checkpoint; a failed write removes the temporary folder and leaves the
previous checkpoints as they were.

No pickle: tensors are stored with safetensors and everything else as JSON (``save_state``), so
loading a checkpoint someone else made cannot run code. Checkpoints of older versions
(``trainer_state.pt``) are refused, not unpickled.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from laser_rl.errors import LaserError
from laser_rl.io import apply_umask

CHECKPOINT_DIR = "checkpoints"
TRAINER_STATE = "trainer_state"
SHARDED_DIR = "sharded"
_STEP_RE = re.compile(r"^step-(\d+)$")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / f"{TRAINER_STATE}.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> tuple[int, Path] | None:
    found = list_checkpoints(output_dir)
    if found:
        return found[-1]
    root = checkpoint_root(output_dir)
    old = sorted(root.glob("step-*/trainer_state.pt")) if root.is_dir() else []
    if old:
        raise LaserError(
            f"{old[-1].parent} is a checkpoint of an older laser-rl (pickled trainer_state.pt); it is not loaded "
            "because unpickling a file can run arbitrary code. Start a new run (its model folder can serve as model.path)"
        )
    return None


def rng_state_name(rank: int) -> str:
    return f"rng-rank{rank}"


def temp_checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".step-{step:06d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def finalize_checkpoint(tmp: Path, step: int, keep: int) -> Path:
    """Rename the temporary folder into place and drop all but the newest ``keep`` checkpoints."""
    final = tmp.parent / f"step-{step:06d}"
    try:
        apply_umask(tmp)  # safetensors writes its file 0600; a checkpoint is shared like any output
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except OSError as e:
        raise checkpoint_write_failed(tmp, step, e) from None
    if keep > 0:
        for _, old in list_checkpoints(tmp.parent.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_write_failed(tmp: Path, step: int, error: BaseException | str) -> LaserError:
    """Remove the half-written ``tmp`` folder and describe the failure (the caller raises it)."""
    shutil.rmtree(tmp, ignore_errors=True)
    last = latest_checkpoint(tmp.parent.parent)
    kept = f"the previous checkpoint {last[1]} is intact" if last else "no earlier checkpoint exists"
    return LaserError(f"could not write the checkpoint of step {step}: {error}; {kept}")


# ---------------------------------------------------------------------- pickle-free state files


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str, seen: set[int]) -> Any:
    """``obj`` as JSON values, its tensors moved into ``tensors`` under their path in ``obj``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:  # safetensors refuses tensors that share memory
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        key = path if path not in tensors else f"{path}#{len(tensors)}"
        tensors[key] = t
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}", seen) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}", seen) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{path}.{k}", seen) for k, v in obj.items()}
        # non-string keys (optimizer state is keyed by parameter index) keep their type as pairs
        return {"__items__": [[_encode(k, tensors, f"{path}.k{i}", seen), _encode(v, tensors, f"{path}.{k}", seen)]
                              for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"cannot store a {type(obj).__name__} at {path!r} in a checkpoint (only tensors and JSON values)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_state(folder: Path, name: str, state: dict[str, Any]) -> None:
    """Write ``state`` (nested dicts/lists/tuples of tensors, numpy arrays and JSON values) as
    ``<name>.safetensors`` (the tensors, dtype and bits kept) + ``<name>.json`` (the rest)."""
    tensors: dict[str, torch.Tensor] = {}
    data = _encode(state, tensors, name, set())
    try:
        save_file(tensors, str(folder / f"{name}.safetensors"))
        (folder / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")
    except OSError as e:
        raise LaserError(f"could not write {folder / name}.{{json,safetensors}}: {e}") from None


def load_state(folder: Path, name: str) -> dict[str, Any]:
    """Read what :func:`save_state` wrote; never unpickles."""
    meta, blob = folder / f"{name}.json", folder / f"{name}.safetensors"
    for f in (meta, blob):
        if not f.is_file():
            raise LaserError(f"checkpoint file {f} is missing: the checkpoint is incomplete")
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
        tensors = load_file(str(blob))
        return _decode(data, tensors)
    except (ValueError, KeyError, OSError) as e:
        raise LaserError(f"cannot read checkpoint state {folder / name}: {e}") from None


# ---------------------------------------------------------------------- sharded (FSDP2) state

SHARDED_META = "sharded_state"


def _tensor_leaves(tree: Any, prefix: str, out: dict[str, torch.Tensor]) -> Any:
    """``tree`` with each tensor replaced by ``{"__dcp__": key}``; the tensors (not copies) go to ``out``."""
    if isinstance(tree, torch.Tensor):
        out[prefix] = tree
        return {"__dcp__": prefix}
    if isinstance(tree, dict):
        return {k: _tensor_leaves(v, f"{prefix}.{k}" if prefix else str(k), out) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_tensor_leaves(v, f"{prefix}.{i}", out) for i, v in enumerate(tree))
    return tree


def _fill_leaves(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {"__dcp__"}:
            return tensors[tree["__dcp__"]]
        return {k: _fill_leaves(v, tensors) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_fill_leaves(v, tensors) for v in tree)
    return tree


def _dcp_storage() -> tuple[Any, Any]:
    try:
        from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
    except ImportError:
        raise LaserError(
            f"torch {torch.__version__} has no safetensors storage for distributed checkpoints; sharded checkpoints "
            "need a newer torch"
        ) from None
    return HuggingFaceStorageWriter, HuggingFaceStorageReader


def save_sharded_state(folder: Path, root: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> None:
    """Write the FSDP2 model and optimizer state into ``folder``: each rank its own shards
    (``sharded/*.safetensors`` through torch.distributed.checkpoint, no pickle anywhere), rank 0
    the non-tensor optimizer state (hyper-parameters) as JSON. A collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    writer_cls, _ = _dcp_storage()
    model_sd, optim_sd = get_state_dict(root, optimizer)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _tensor_leaves({"model": model_sd, "optim": optim_sd}, "", tensors)
    try:
        dcp.save(tensors, storage_writer=writer_cls(str(folder / SHARDED_DIR), save_distributed=True))
    except Exception as e:  # DCP gathers every rank's failure into one CheckpointException
        raise LaserError(f"could not write the sharded state to {folder / SHARDED_DIR}: {e}") from None
    if rank == 0:
        save_state(folder, SHARDED_META, {"skeleton": skeleton})


def load_sharded_state(folder: Path, root: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore what :func:`save_sharded_state` wrote into the sharded ``root`` and ``optimizer``
    (same world size or another: DCP reshards). A collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    _, reader_cls = _dcp_storage()
    if not (folder / SHARDED_DIR).is_dir():
        raise LaserError(f"{folder} has no {SHARDED_DIR}/ folder: it was not written by a sharded run")
    skeleton = load_state(folder, SHARDED_META)["skeleton"]
    model_sd, optim_sd = get_state_dict(root, optimizer)  # the targets (creates the optimizer state)
    targets: dict[str, torch.Tensor] = {}
    _tensor_leaves({"model": model_sd, "optim": optim_sd}, "", targets)
    try:
        dcp.load(targets, storage_reader=reader_cls(str(folder / SHARDED_DIR)))  # in place
    except Exception as e:
        raise LaserError(f"cannot read the sharded state in {folder / SHARDED_DIR}: {e}") from None
    state = _fill_leaves(skeleton, targets)
    set_state_dict(root, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
