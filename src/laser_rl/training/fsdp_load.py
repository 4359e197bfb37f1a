"""Load a Hugging Face causal LM straight into FSDP2 shards: no rank builds the full model on its device.

Why: loading the float32 master weights on every rank and sharding afterwards puts a full float32
copy (4 bytes/parameter, 30 GB for a 7B model) on every GPU before ``fully_shard`` frees it, and
eight copies in host memory while the eight ranks stage their loads. Here (the torchtune / verl
recipe):

1. rank 0 alone loads the real weights, in float32 on the CPU, and applies ``prepare`` (e.g. the
   self-reward token's embedding row); its full state dict stays in host memory until step 5;
2. every rank builds the same architecture on the ``meta`` device (shapes only, no memory) and
   applies the same ``prepare``, so the shapes match rank 0's;
3. every rank wraps it (``wrap``, e.g. ``PolicyWithScore``) and applies ``fully_shard`` (layout as
   :func:`laser_rl.training.sharding.shard_model`);
4. ``to_empty`` allocates each rank's shards, uninitialised, on the training device;
5. ``set_model_state_dict(full_state_dict=True, broadcast_from_rank0=True)`` sends rank 0's
   tensors one at a time; each rank keeps its slice. Tied weights stay one parameter (FSDP2
   manages a shared parameter once); buffers that are not in the state dict (the rotary
   ``inv_freq``) are broadcast from rank 0's real model, so their values are what the model's own
   code computed, without knowing the architecture.

Device memory on every rank is then its shards plus one tensor in flight; rank 0's host memory
holds one full float32 copy during the load (docs/reproducing-the-paper.md, memory plan).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from laser_rl.errors import LaserError
from laser_rl.training.sharding import apply_fully_shard, finish_sharding, fsdp2_available


def _nonpersistent_buffers(root: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every buffer that ``state_dict`` leaves out (e.g. rotary inv_freq)."""
    persistent = set(root.state_dict(keep_vars=True))
    return [(n, b) for n, b in root.named_buffers() if n not in persistent]


def _meta_model(path: str, *, trust_remote_code: bool, attn_implementation: str | None) -> nn.Module:
    """The architecture of ``path`` (its config.json alone) on the meta device, float32, train-ready."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from laser_rl.integrations.hf import check_model_folder, is_local_path

    local = is_local_path(path)
    src = str(check_model_folder(path)) if local else path
    try:
        config = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code, local_files_only=local)
    except (OSError, ValueError, KeyError) as e:
        raise LaserError(f"{src}: cannot read the model's config ({e})") from None
    kwargs: dict[str, Any] = {"dtype": torch.float32, "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    # from_config derives generation settings from config.json; save_pretrained should write the folder's
    # own (without a generation_config.json, from_pretrained derives them the same way)
    with contextlib.suppress(OSError):
        model.generation_config = GenerationConfig.from_pretrained(src, local_files_only=local)
    return model.eval()  # as load_model returns it: the caller decides when to train


def load_sharded(
    path: str,
    *,
    device: torch.device,
    compute_dtype: torch.dtype = torch.float32,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    prepare: Callable[[nn.Module], None] | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    mesh: Any = None,
) -> tuple[nn.Module, nn.Module]:
    """The model at ``path`` as float32 FSDP2 shards on ``device``, loaded without a full copy on any device.

    A collective: every rank calls it with the same arguments, inside an initialised process
    group. ``prepare(model)`` runs on every rank's unsharded, unwrapped model before sharding
    (real weights on rank 0, then on the meta model of every rank): it must change both alike and
    may only use shapes on meta, e.g. ``enable_gradient_checkpointing``. A grown vocabulary
    (``resize_embeddings_if_needed`` after z was added) is the exception: the meta model is resized
    to rank 0's embedding size before ``prepare`` runs, so the resize in ``prepare`` is a no-op there.
    ``wrap(model)`` returns the module the training step calls (default: the model itself).

    Returns ``(model, root)``: the Hugging Face model (for generation and ``save_pretrained``) and
    the sharded root that contains it. Replaces ``load_model`` + ``shard_model`` in the trainer.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from laser_rl.integrations.hf import load_model

    why = fsdp2_available()
    if why:
        raise LaserError(f"cannot shard the model: {why}")
    if not dist.is_initialized():
        raise LaserError("FSDP2 needs an initialised process group (launch with torchrun or accelerate launch)")
    wrap = wrap or (lambda m: m)
    rank = dist.get_rank()

    full: dict[str, torch.Tensor] = {}
    buffers: dict[str, torch.Tensor] = {}
    vocab = 0
    failure: BaseException | None = None
    if rank == 0:  # 1. the only real load, in host memory
        try:
            real = load_model(path, dtype=torch.float32, device="cpu", trust_remote_code=trust_remote_code,
                              attn_implementation=attn_implementation)
            if prepare is not None:
                prepare(real)
            real_root = wrap(real)
            vocab = real.get_input_embeddings().num_embeddings
            full = {k: v.detach() for k, v in real_root.state_dict().items()}
            buffers = {n: b.detach() for n, b in _nonpersistent_buffers(real_root)}
            del real, real_root
        except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks have heard of it
            failure = e
    # every rank learns of rank 0's failure, so none waits for a broadcast that never comes
    news = [None if failure is None else (isinstance(failure, LaserError), str(failure)), sorted(buffers), vocab]
    dist.broadcast_object_list(news, src=0)
    if failure is not None:
        raise failure
    if news[0] is not None:
        user_error, msg = news[0]
        raise LaserError(msg) if user_error else RuntimeError(f"rank 0 failed to load {path}: {msg}")

    model = _meta_model(path, trust_remote_code=trust_remote_code, attn_implementation=attn_implementation)  # 2.
    if model.get_input_embeddings().num_embeddings != news[2]:
        # rank 0's prepare added tokens; transformers' mean-initialised resize reads values, which meta
        # tensors have not, so the shape is copied here (the values come from rank 0) and prepare's
        # own resize then finds nothing to do
        model.resize_token_embeddings(news[2], mean_resizing=False)
    if prepare is not None:
        prepare(model)
    root = wrap(model)
    if not any(m is model for m in root.modules()):
        raise LaserError("load_sharded: wrap(model) must return a module that contains the model")
    own = _nonpersistent_buffers(root)
    if sorted(n for n, _ in own) != news[1]:  # the same on every rank, so all raise together
        raise LaserError(f"load_sharded: the model built from {path}/config.json has other buffers than the loaded one "
                         f"({sorted(n for n, _ in own)} vs {news[1]})")
    apply_fully_shard(root, compute_dtype=compute_dtype, mesh=mesh)  # 3.
    root.to_empty(device=device)  # 4.
    # 5. parameters (and persistent buffers) from rank 0's state dict, then the computed buffers
    set_model_state_dict(root, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    bcast_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    for name, buf in _nonpersistent_buffers(root):
        if rank == 0:
            value = buffers[name].to(bcast_device, buf.dtype)
        else:
            value = torch.empty(buf.shape, dtype=buf.dtype, device=bcast_device)
        dist.broadcast(value, src=0)
        buf.copy_(value)
    finish_sharding(root)
    return model, root
