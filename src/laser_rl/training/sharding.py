"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for a Hugging Face causal LM, generation included.

Layout: every decoder layer is its own FSDP unit and the module the training step calls (the
``PolicyWithScore`` wrapper, or the model itself) is the root unit; it owns what is left (token
embeddings, final norm, output head). Parameters, gradients and AdamW state are split across the
ranks; a layer's full parameters exist only while that layer runs.

Precision (``mixed_precision_policy``): the sharded parameters, the optimizer's master weights and
its state stay float32; each unit's parameters are all-gathered in the compute dtype (bf16 on GPU)
and gradients are reduce-scattered in float32. So under ``train.sharding: fsdp2`` the model is
loaded in float32 and ``model.dtype`` names the *compute* dtype. The score's log-softmax runs in
float32 either way (``policy.chunked_token_logprobs`` upcasts the logits).

Generation (``generation_window``): the built-in sampler calls the Hugging Face model one token at
a time. Two settings (``train.generation_gather``):

- ``window`` (default): every unit is gathered once when the window opens and kept until it
  closes. Decoding then runs without any communication, as fast as an unsharded model, at the cost
  of holding the full compute-dtype weights (2 bytes/parameter in bf16: 15 GB for a 7B model) on
  every GPU for the whole generation, next to the KV cache.
- ``per_step``: only the root unit (embeddings, head) stays gathered; each decoder layer is
  all-gathered for every forward and freed after it. Memory is one or two layers' weights, but
  every decode step moves all the weights over the interconnect once (≈ 15 GB per token for 7B),
  which makes long generations communication-bound. Because every forward is then a collective,
  ranks must run the same number of forwards: a rank whose rows finish early keeps joining the
  others' forwards with a one-token dummy input (``Lockstep``) until every rank is done.

Everything here is a no-op for a model that is not sharded, so callers need no branches.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from laser_rl.errors import LaserError

if TYPE_CHECKING:
    from laser_rl.training.config import TrainConfig

GenerationGather = Literal["window", "per_step"]
GENERATION_GATHERS: tuple[str, ...] = ("window", "per_step")
SHARDINGS: tuple[str, ...] = ("none", "fsdp2")

# Config fields whose equality makes two checkpoints the same architecture for the reference model
# (vocab_size may differ: the policy can have gained the self-reward token).
_ARCHITECTURE_FIELDS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "intermediate_size", "head_dim", "tie_word_embeddings",
)


# ----------------------------------------------------------------------------------------- checks


def fsdp2_available() -> str | None:
    """None when FSDP2 can be used here, else the reason it cannot."""
    if not torch.distributed.is_available():
        return "this PyTorch build has no torch.distributed support"
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard (FSDP2 needs torch >= 2.6)"
    return None


def _architecture(path: str, trust_remote_code: bool) -> dict[str, Any]:
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise LaserError(f"cannot read the model config of {path}: {e}") from None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return {name: getattr(text, name, None) for name in _ARCHITECTURE_FIELDS}


def check_reference_architecture(policy_path: str, reference_path: str, trust_remote_code: bool = False) -> None:
    """Reject a reference model whose architecture differs from the policy's (config.json only, no weights).

    The two are sharded the same way and compared token by token, so the layer structure must
    match; the vocabulary may differ by added tokens.
    """
    a, b = _architecture(policy_path, trust_remote_code), _architecture(reference_path, trust_remote_code)
    diff = [f"{k}: {a[k]!r} vs {b[k]!r}" for k in _ARCHITECTURE_FIELDS if a[k] != b[k]]
    if diff:
        raise LaserError(
            f"the reference model {reference_path} has a different architecture from the policy {policy_path} "
            f"({'; '.join(diff)}); use a reference with the policy's architecture"
        )


def resolve_sharding(configured: str, environ: Mapping[str, str] | None = None) -> str:
    """The sharding a run uses: ``train.sharding``, or ``fsdp2`` when ``accelerate launch`` was given
    an FSDP2 config (configs/accelerate/fsdp2.yaml), which exports ACCELERATE_USE_FSDP/FSDP_VERSION.
    laser-rl always shards the model itself, so an FSDP1 launcher config is refused."""
    env = os.environ if environ is None else environ
    if env.get("ACCELERATE_USE_FSDP", "false").lower() not in ("1", "true", "yes"):
        return configured
    version = env.get("FSDP_VERSION", "1")
    if version != "2":
        raise LaserError(
            f"accelerate launch config selects FSDP version {version}; laser-rl supports FSDP2 only: use "
            "configs/accelerate/fsdp2.yaml (fsdp_version: 2)"
        )
    return "fsdp2"


def check_sharding_setup(cfg: TrainConfig, *, policy_path: str | None = None) -> None:
    """Reject unsupported sharding combinations with a clear error, before any model is loaded.

    ``policy_path``: the folder the policy is loaded from when it is not ``model.path`` (a resumed
    checkpoint); the reference model always comes from ``model.path``.
    """
    if resolve_sharding(cfg.train.sharding) != "fsdp2":
        return
    why = fsdp2_available()
    if why:
        raise LaserError(f"train.sharding=fsdp2: {why}; use train.sharding=none")
    if cfg.model.dtype == "float16":
        raise LaserError(
            "train.sharding=fsdp2 with model.dtype=float16: float16 compute needs gradient scaling, which the "
            "sharded path does not do; use model.dtype=bfloat16 (or float32)"
        )
    uses_reference = cfg.loss.kl_coef > 0 or (cfg.laser.enabled and cfg.laser.reference == "model")
    if uses_reference and policy_path is not None and policy_path != cfg.model.path:
        check_reference_architecture(policy_path, cfg.model.path, cfg.model.trust_remote_code)


# ----------------------------------------------------------------------------------------- sharding


def mixed_precision_policy(compute_dtype: torch.dtype) -> Any:
    """FSDP2's MixedPrecisionPolicy for a compute dtype: parameters gathered in ``compute_dtype``,
    gradients reduced in float32; None for float32 compute (nothing to cast, e.g. on CPU)."""
    if compute_dtype == torch.float32:
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32, output_dtype=None)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder blocks of a Hugging Face model, found without naming an architecture.

    First by the class names the model declares in ``_no_split_modules`` (what device maps keep on
    one device, i.e. the decoder layers for causal LMs), else ``get_decoder().layers``.
    """
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    # nested matches (a block inside a block) would be sharded twice: keep the outermost
    layers = [m for m in layers if not any(m is not o and _contains(o, m) for o in layers)]
    if not layers:
        inner = next((m for m in model.modules() if hasattr(m, "get_decoder")), None)
        decoder = inner.get_decoder() if inner is not None else None
        found = getattr(decoder, "layers", None)
        layers = list(found) if isinstance(found, nn.ModuleList) else []
    if not layers:
        raise LaserError(
            f"cannot find the decoder layers of {type(model).__name__} to shard (neither _no_split_modules "
            "nor get_decoder().layers); use train.sharding=none"
        )
    return layers


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def is_sharded(module: nn.Module) -> bool:
    if fsdp2_available() is not None:
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def ensure_process_group(device: torch.device) -> bool:
    """Start a one-process group when none exists (``train.sharding=fsdp2`` run without a launcher:
    FSDP2 needs a group even for world size 1). Returns True when it started one."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return True


def leave_process_group() -> None:
    """End a multi-process run: every rank waits at a barrier, then the default group is destroyed.

    Call it once nothing else holds the DDP/FSDP wrapper: a wrapper keeps its own reference to the
    group, and a gloo group first freed during interpreter shutdown can abort the rank (SIGABRT,
    "terminate called without an active exception") after the run has succeeded. A no-op without a group.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard_model(root: nn.Module, *, compute_dtype: torch.dtype = torch.float32, mesh: Any = None) -> nn.Module:
    """Apply FSDP2 to ``root`` in place: each decoder layer inside it, then ``root`` itself.

    ``root`` is the module whose forward the training step calls (``PolicyWithScore`` or the
    model); its parameters must be float32 (the master weights) and on the training device.
    Returns ``root`` (its class becomes an ``FSDPModule`` subclass). The root is initialised at
    once, so the sampler may call the inner model before the first training forward. A model
    not yet loaded goes through :func:`laser_rl.training.fsdp_load.load_sharded` instead.
    """
    apply_fully_shard(root, compute_dtype=compute_dtype, mesh=mesh)
    finish_sharding(root)
    return root


def apply_fully_shard(root: nn.Module, *, compute_dtype: torch.dtype = torch.float32, mesh: Any = None) -> None:
    """``fully_shard`` each decoder layer of ``root``, then ``root``: the layout of :func:`shard_model`.
    Works on meta parameters too (meta-device initialisation); :func:`finish_sharding` must follow
    once the parameters hold their values."""
    from torch.distributed.fsdp import fully_shard

    why = fsdp2_available()
    if why:
        raise LaserError(f"cannot shard the model: {why}")
    if not torch.distributed.is_initialized():
        raise LaserError("FSDP2 needs an initialised process group (launch with torchrun or accelerate launch)")
    kwargs: dict[str, Any] = {"mesh": mesh}
    mp = mixed_precision_policy(compute_dtype)
    if mp is not None:
        kwargs["mp_policy"] = mp
    for layer in decoder_layers(root):
        fully_shard(layer, **kwargs)
    fully_shard(root, **kwargs)


def finish_sharding(root: nn.Module) -> None:
    """Initialise FSDP's state of the sharded ``root`` now rather than at its first forward.

    FSDP picks its root as the first unit to run forward; generation calls the inner model (and
    its layers) directly, so the root is fixed here or a layer would claim it. FSDP refuses to do
    this while parameters are still on the meta device.
    """
    root._get_fsdp_state()._lazy_init()


@contextlib.contextmanager
def no_grad_sync(policy: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Skip the cross-rank gradient reduction of every backward inside the block (gradient accumulation).

    The trainer runs all but the last micro-batch of an update inside ``no_grad_sync(policy, True)``
    and the last one outside it (or with ``enabled=False``): the gradients are then reduced once per
    optimiser step instead of once per micro-batch, and equal the per-micro-batch-reduced ones.

    - FSDP2 (``policy`` holds ``fully_shard`` units): ``set_requires_gradient_sync(False)`` on every
      unit. No reduce-scatter runs; each unit keeps its *unsharded* gradient, accumulated in the
      reduce dtype (float32), until the synced backward. That costs 4 bytes/parameter of device
      memory on every rank (30 GB for a 7B model, see the memory plan), the price of skipping
      the communication; use it where that fits.
    - DDP (what ``accelerate.prepare`` returns with several processes): ``policy.no_sync()``, the
      same thing accelerate's ``Accelerator.no_sync`` does; it costs no memory, DDP's gradients are
      full-size anyway.
    - one process, or ``enabled=False``: nothing.
    """
    if not enabled:
        yield
        return
    units = _fsdp_units(policy) if is_sharded(policy) else []
    if units:
        for unit in units:
            unit.set_requires_gradient_sync(False, recurse=False)
        try:
            yield
        finally:
            for unit in units:
                unit.set_requires_gradient_sync(True, recurse=False)
        return
    no_sync = getattr(policy, "no_sync", None)  # torch DistributedDataParallel
    with no_sync() if callable(no_sync) else contextlib.nullcontext():
        yield


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """The model's own activation checkpointing, non-reentrant (the variant FSDP2 supports: the
    recomputation re-enters each layer's pre-forward hook, which gathers its parameters again)."""
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _fsdp_units(root: nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in root.modules() if isinstance(m, FSDPModule)]


def _sync_device(root: nn.Module) -> None:
    # The gathers below run on FSDP's side streams; make them wait for the optimizer's last writes.
    p = next(root.parameters(), None)
    if p is not None and p.device.type == "cuda":
        torch.cuda.synchronize(p.device)


@contextlib.contextmanager
def generation_window(
    root: nn.Module,
    gather: GenerationGather = "window",
    *,
    forward_module: nn.Module | None = None,
    dummy_forward: Callable[[], Any] | None = None,
) -> Iterator[Lockstep | None]:
    """Make the sharded ``root`` usable for generation inside the block (see the module docstring).

    ``forward_module``: the module the sampler calls (the Hugging Face model inside ``root``);
    under ``per_step`` with several ranks its forwards are kept in lockstep (``Lockstep``), and
    the block's exit waits until every rank has finished generating. All ranks must enter and
    leave the window together. Yields the ``Lockstep`` in use (None when forwards are local). A
    no-op for a module that is not sharded.
    """
    if gather not in GENERATION_GATHERS:
        raise LaserError(f"generation gather must be one of {', '.join(GENERATION_GATHERS)}, got {gather!r}")
    if not is_sharded(root):
        yield None
        return
    units = _fsdp_units(root)
    _sync_device(root)
    if gather == "window":
        for unit in units:
            unit.set_reshard_after_forward(False, recurse=False)
        try:
            for unit in units:
                unit.unshard()
            yield None
        finally:
            for unit in units:
                unit.reshard()
            for unit in units:  # training default: layers free their weights after forward, the root keeps them
                unit.set_reshard_after_forward(unit is not root, recurse=False)
        return
    # Gather each unit once here, outside the sampler's inference mode: FSDP keeps some gather
    # buffers across calls, and buffers first made in inference mode break its later gathers.
    for unit in units:
        if unit is not root:
            unit.unshard()
            unit.reshard()
    root.unshard()  # embeddings and head: called outside any layer's hooks by the sampler
    try:
        target = forward_module if forward_module is not None else root
        with Lockstep(target, dummy_forward=dummy_forward) as lockstep:
            yield lockstep if lockstep.active else None
    finally:
        root.reshard()


class Lockstep:
    """Keep every rank's forwards of ``module`` in step while some ranks still generate.

    Under FSDP with per-forward gathering each forward is a collective, so a rank whose rows have
    finished cannot simply stop. Inside the block each forward of ``module`` is preceded by an
    all-reduce of "I am still generating"; on leaving the block a rank keeps answering that
    all-reduce with 0, each time followed by a dummy forward that joins the others' gathers, until
    the sum is 0: every rank is done, and all leave together.

    An engine that drives its own loop can call :meth:`step` itself instead of relying on the
    hook. With one process it does nothing.
    """

    def __init__(self, module: nn.Module, *, dummy_forward: Callable[[], Any] | None = None,
                 group: Any = None) -> None:
        self.module = module
        self.group = group
        self.dummy_forward = dummy_forward or (lambda: _one_token_forward(module))
        self.active = torch.distributed.is_available() and torch.distributed.is_initialized() and \
            torch.distributed.get_world_size(group) > 1
        self._handle: Any = None
        self._in_join = False
        self.dummy_forwards = 0  # for tests and logging: forwards this rank ran only to keep in step

    def _device(self) -> torch.device:
        backend = torch.distributed.get_backend(self.group)
        if backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def step(self, running: bool) -> bool:
        """One lockstep round: True while any rank still runs (then every rank runs one forward)."""
        flag = torch.tensor([1 if running else 0], device=self._device())
        torch.distributed.all_reduce(flag, group=self.group)
        return bool(flag.item())

    def _pre_forward(self, module: nn.Module, args: Any) -> None:
        if not self._in_join:
            self.step(True)

    def join(self) -> None:
        """Run dummy forwards until every rank has stopped generating."""
        self._in_join = True
        try:
            while self.step(False):
                with torch.inference_mode():
                    self.dummy_forward()
                self.dummy_forwards += 1
        finally:
            self._in_join = False

    def __enter__(self) -> Lockstep:
        if self.active:
            self._handle = self.module.register_forward_pre_hook(self._pre_forward)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._handle is not None:
            try:
                if exc_type is None:  # after an error the other ranks cannot be joined reliably
                    self.join()
            finally:
                self._handle.remove()
                self._handle = None


def _one_token_forward(model: nn.Module) -> Any:
    # Any id runs the same layers (hence the same gathers) as a real decode step; 0 is in every vocabulary.
    device = next(model.parameters()).device
    return model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), use_cache=False)


# ----------------------------------------------------------------------------------------- state


def full_state_dict(root: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The full (unsharded) float state dict on rank 0, on CPU; an empty dict on the other ranks.

    A collective: every rank must call it. ``prefix`` (e.g. ``"model."`` for ``PolicyWithScore``)
    is stripped from the keys, so the result fits the inner model's ``save_pretrained``.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def module_prefix(root: nn.Module, inner: nn.Module) -> str:
    """The state-dict key prefix of ``inner`` inside ``root`` ('' when they are the same)."""
    for name, m in root.named_modules():
        if m is inner:
            return f"{name}." if name else ""
    raise ValueError("inner is not a submodule of root")


def save_pretrained_full(root: nn.Module, model: nn.Module, folder: str | Path, rank: int) -> None:
    """Gather the full weights and write ``model.save_pretrained(folder)`` on rank 0 (a collective)."""
    sd = full_state_dict(root, module_prefix(root, model))
    if rank == 0:
        model.save_pretrained(folder, state_dict=sd, safe_serialization=True)

