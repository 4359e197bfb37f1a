"""Batched KV-cache sampling that reads LaSeR's self-reward score inside the decoding loop.

Why a sampler of our own instead of ``model.generate``: LaSeR's score is
``lp_z = log π(z | x, y, EOS)``, the log-probability of a special token z *after* the stop token.
A row that emits its stop token at step t is fed that token at step t+1 anyway (it is the "current
token" of the next decode step), so the logits of that step give lp_z for free. The row is then
frozen. The batch therefore pays at most one extra decode step for the score (only when a row
finishes at the very last step), instead of the separate teacher-forced forward pass that the
reference code runs.

Other design points:
- Prompts are left-padded, with an explicit attention mask and position ids computed from it, so a
  row's result does not depend on how much padding its batch needed.
- Finished rows are dropped from the batch and from the KV cache once enough of them accumulate,
  so they stop costing compute.
- Random numbers are drawn once per (step, original row) before decoding (inverse-CDF sampling), so
  a row's sampled tokens do not depend on when other rows finish or on batch compaction: the same
  seed gives the same tokens with and without the score. With ``row_seeds`` each row draws its
  numbers from its own seed, so a row's tokens do not depend on the batch it is sampled in either.
- z and ``suppress_ids`` are never sampled (their logits are masked to -inf); the score and the
  recorded log-probs use the unmasked logits, exactly what a training forward pass recomputes.
- Where a response ends (its first stop id) is :func:`laser_rl.core.laser.find_eos`'s, as everywhere.

Why top-k/top-p are ours and not transformers' ``TopKLogitsWarper`` / ``TopPLogitsWarper``: the warpers
return full-vocabulary logits with the dropped tokens at -inf, after which this sampler would still need
its own draw, since the inverse-CDF draw with one pre-drawn uniform per row is what keeps each row's
tokens independent of its batch and of compaction (``torch.multinomial`` draws from the batch's shared
stream). Our filter is that draw's first half: one ``topk``/``sort`` gives the kept tokens in
probability order, and the uniform is inverted over them. Going through the warpers would also change
the tokens drawn under a given seed (the CDF would run in vocabulary order, and ``TopKLogitsWarper``
keeps every token tied with the k-th, so more than k), and sort the vocabulary twice per step instead
of once. The rule is the same: keep the k most likely, then the smallest prefix reaching ``top_p``.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import DynamicCache

from laser_rl.core.laser import find_eos
from laser_rl.errors import LaserError
from laser_rl.rollout.kv_cache import growing_cache

# Drop finished rows from the batch (and the KV cache) once at least this fraction of the current
# batch is finished. Compaction costs one KV-cache copy; every later step then runs on fewer rows.
COMPACT_FRACTION = 0.125


@dataclass
class SamplingConfig:
    """How to sample: temperature 0 means greedy; top_k 0 and top_p 1 mean no filtering."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise LaserError(f"sampling temperature must be a finite number >= 0, got {t!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 < p <= 1.0):
            raise LaserError(f"sampling top_p must be in (0, 1], got {p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise LaserError(f"sampling top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise LaserError(f"sampling max_new_tokens must be an integer >= 1, got {n!r}")


@dataclass
class Rollout:
    """The sampled responses of one batch, right-padded, plus what LaSeR needs per row.

    response_ids[B, T]   long, right-padded with pad_id
    response_mask[B, T]  bool, the generated tokens up to and including the stop token
    logprobs[B, T]       float32, log_softmax(logits / temperature) at the sampled token (before
                         top-k/top-p filtering and id suppression; untempered for temperature 0),
                         0 where masked
    finished[B]          bool, the row emitted a stop token
    truncated[B]         bool, the row hit max_new_tokens without a stop token
    lp_z[B]              float32, log_softmax(untempered float32 logits after feeding the stop
                         token)[z]; NaN where not finished or when no z was given
    """

    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    finished: torch.Tensor
    truncated: torch.Tensor
    lp_z: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """Number of generated tokens per row (including the stop token)."""
        return self.response_mask.sum(dim=1)

    def responses(self) -> list[list[int]]:
        """The generated ids per row, including the stop token of finished rows."""
        ids = self.response_ids.cpu().tolist()
        return [row[:n] for row, n in zip(ids, self.lengths.cpu().tolist())]


# ----------------------------------------------------------------------------------------------
# Input validation and model introspection shared with the scorer.


def vocab_size(model: torch.nn.Module) -> int:
    """Ids a model accepts: the rows of its input embedding (falls back to config.vocab_size)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def context_length(model: torch.nn.Module) -> int | None:
    """The model's maximum number of positions from its config, or None when it declares none."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def check_token_id(value: object, vocab: int, name: str) -> int:
    """An id argument must be an int in [0, vocab); say which argument is wrong otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LaserError(f"{name} must be an integer token id, got {value!r}")
    if not 0 <= value < vocab:
        raise LaserError(f"{name}={value} is not in the model's vocabulary (0..{vocab - 1})")
    return value


def check_token_ids(values: Iterable[int], vocab: int, name: str) -> frozenset[int]:
    if isinstance(values, int):
        raise LaserError(f"{name} must be a collection of token ids, got the single integer {values}")
    return frozenset(check_token_id(v, vocab, f"{name} entry") for v in values)


def as_id_rows(rows: Sequence[Sequence[int]], name: str) -> list[list[int]]:
    """Convert prompts/responses (lists, tuples or 1-D tensors of ints) to lists of ints."""
    if isinstance(rows, torch.Tensor):
        if rows.dim() != 2:
            raise LaserError(f"{name} as a tensor must be 2-D [rows, tokens], got shape {tuple(rows.shape)}")
        return rows.tolist()
    out: list[list[int]] = []
    for i, row in enumerate(rows):
        if isinstance(row, torch.Tensor):
            if row.dim() != 1:
                raise LaserError(
                    f"{name} row {i}: expected a 1-D tensor of ids, got shape {tuple(row.shape)}"
                )
            out.append(row.tolist())
            continue
        if isinstance(row, (str, bytes)):
            raise LaserError(f"{name} row {i}: expected token ids, got text (tokenise it first)")
        try:
            out.append([operator.index(v) for v in row])
        except TypeError:
            raise LaserError(f"{name} row {i}: expected a sequence of integer token ids") from None
    return out


def check_ids_in_vocab(ids: list[int], vocab: int, where: str) -> None:
    """Raise naming ``where`` (e.g. "prompt row 3") if an id is outside [0, vocab)."""
    if ids and (min(ids) < 0 or max(ids) >= vocab):
        value = next(v for v in ids if not 0 <= v < vocab)
        raise LaserError(f"{where}: token id {value} is not in the model's vocabulary (0..{vocab - 1})")


def left_pad(
    rows: list[list[int]], pad_id: int, extra: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad rows into ids[B, P]; mask[B, P + extra] (True on real tokens and on the ``extra``
    columns reserved for generation); lengths[B]."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(lengths.max())
    flat = torch.tensor([v for r in rows for v in r], dtype=torch.long)
    valid = torch.arange(width).unsqueeze(0) >= (width - lengths).unsqueeze(1)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    ids[valid] = flat  # row-major order of `valid` matches the concatenated rows
    mask = torch.ones((len(rows), width + extra), dtype=torch.bool)
    mask[:, :width] = valid
    return ids.to(device), mask.to(device), lengths.to(device)


def supports_logits_to_keep(model: torch.nn.Module) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return False


# ----------------------------------------------------------------------------------------------
# Sampling.


def _select_tokens(
    logits: torch.Tensor,
    ban: torch.Tensor | None,
    uniforms: torch.Tensor | None,
    cfg: SamplingConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row from float32 ``logits`` [b, V] (modified in place).

    Returns (tokens[b], logprobs[b]); logprobs = log_softmax(logits / T)[token] computed on the
    unfiltered, unsuppressed logits (untempered for T = 0). Sampling is inverse-CDF with one
    pre-drawn uniform in (0, 1] per row, so it never picks a zero-probability (masked) token.
    """
    scaled = logits if cfg.temperature in (0, 1) else logits.div_(cfg.temperature)
    lse = torch.logsumexp(scaled, dim=-1, keepdim=True)
    if ban is not None:
        scaled.index_fill_(1, ban, float("-inf"))
    if uniforms is None:  # greedy
        tok = scaled.argmax(dim=-1, keepdim=True)
    else:
        if cfg.top_k > 0 or cfg.top_p < 1.0:
            k = min(cfg.top_k, scaled.shape[-1]) if cfg.top_k > 0 else scaled.shape[-1]
            if k < scaled.shape[-1]:
                vals, idx = scaled.topk(k, dim=-1)  # sorted, descending
            else:
                vals, idx = scaled.sort(dim=-1, descending=True)
            probs = (vals - vals[:, :1]).exp_()
            if cfg.top_p < 1.0:
                cum = probs.cumsum(dim=-1)
                keep = (cum - probs) < cfg.top_p * cum[:, -1:]  # the top token is always kept
                probs = probs * keep
        else:
            idx = None
            probs = (scaled - scaled.amax(dim=-1, keepdim=True)).exp_()
        cdf = probs.cumsum(dim=-1)
        j = torch.searchsorted(cdf, uniforms.unsqueeze(1) * cdf[:, -1:]).clamp_(max=cdf.shape[-1] - 1)
        tok = j if idx is None else idx.gather(-1, j)
    logprob = scaled.gather(-1, tok) - lse
    return tok.squeeze(1), logprob.squeeze(1)


def sample(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    stop_ids: Iterable[int],
    config: SamplingConfig,
    z_id: int | None = None,
    suppress_ids: Iterable[int] = (),
    generator: torch.Generator | None = None,
    row_seeds: Sequence[int] | None = None,
    observer: DecodeObserver | None = None,
) -> Rollout:
    """Sample one response per prompt with a KV cache and read lp_z one step after each stop token.

    ``prompts`` are token-id lists of any lengths (left-padded here). A row stops at the first id
    in ``stop_ids`` (an empty set: every row runs ``max_new_tokens``). ``z_id`` and
    ``suppress_ids`` are never sampled. With ``z_id`` given, a row that emits its stop token is
    fed that token once more (the next step's input, computed for the other rows anyway) and
    ``lp_z = log_softmax(float32 logits)[z_id]`` is read from that forward; then the row is frozen.

    Randomness: ``generator`` draws every row's numbers from one stream (they depend on the row's
    place in the batch); ``row_seeds`` (one integer per prompt, instead of ``generator``) gives each
    row its own stream, so the same seed and prompt give the same response in any batch.
    """
    cfg = config
    if row_seeds is not None:
        if generator is not None:
            raise LaserError("pass either generator or row_seeds, not both")
        if len(row_seeds) != len(prompts):
            raise LaserError(f"row_seeds has {len(row_seeds)} entries for {len(prompts)} prompts")
    if not isinstance(cfg, SamplingConfig):
        raise LaserError(f"config must be a SamplingConfig, got {type(cfg).__name__}")
    vocab = vocab_size(model)
    pad_id = check_token_id(pad_id, vocab, "pad_id")
    stops, banned, z_id = _check_special_ids(stop_ids, suppress_ids, z_id, vocab)
    T = cfg.max_new_tokens
    rows = _check_prompts(prompts, vocab, context_length(model), T)

    device = model_device(model)
    ids, mask_buf, lengths = left_pad(rows, pad_id, T + 1, device)
    B, P = ids.shape

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            uniforms = _uniforms(B, T, cfg, generator, row_seeds, device)
            steps, lp_z = _decode(model, ids, mask_buf, lengths, T, cfg, stops, banned, z_id, uniforms,
                                  observer or _Unobserved())
    finally:
        model.train(was_training)

    # Everything after a row's first stop token is masked out (frozen rows that were still in the
    # batch wrote throw-away tokens there).
    tokens, logprobs = steps
    eos = find_eos(tokens, sorted(stops), allow_no_stops=True)
    response_mask, finished = eos.response_mask, eos.finished
    return Rollout(
        response_ids=torch.where(response_mask, tokens, pad_id),
        response_mask=response_mask,
        logprobs=torch.where(response_mask, logprobs, 0.0),
        finished=finished,
        truncated=~finished,
        lp_z=lp_z,
    )


def _check_special_ids(
    stop_ids: Iterable[int], suppress_ids: Iterable[int], z_id: int | None, vocab: int
) -> tuple[frozenset[int], set[int], int | None]:
    """Validated (stop ids, ids never sampled — z included —, z_id)."""
    stops = check_token_ids(stop_ids, vocab, "stop_ids")
    banned = set(check_token_ids(suppress_ids, vocab, "suppress_ids"))
    if z_id is not None:
        z_id = check_token_id(z_id, vocab, "z_id")
        if z_id in stops:
            raise LaserError(f"z_id={z_id} is also a stop id: the self-reward token must differ from EOS")
        banned.add(z_id)
    if banned & stops:
        raise LaserError(f"suppress_ids/z_id overlap stop_ids {sorted(banned & stops)}: rows could never stop")
    if len(banned) >= vocab:
        raise LaserError("suppress_ids cover the whole vocabulary: nothing can be sampled")
    return stops, banned, z_id


def _check_prompts(prompts: Sequence[Sequence[int]], vocab: int, ctx: int | None, T: int) -> list[list[int]]:
    """Prompts as id lists; an empty one, an id outside the vocabulary or no room for T new tokens is an error."""
    rows = as_id_rows(prompts, "prompt")
    if not rows:
        raise LaserError("prompts is empty: nothing to sample")
    for i, r in enumerate(rows):
        if not r:
            raise LaserError(f"prompt row {i} is empty")
        check_ids_in_vocab(r, vocab, f"prompt row {i}")
        if ctx is not None and len(r) + T > ctx:
            what = "is longer than" if len(r) > ctx else f"plus max_new_tokens={T} exceeds"
            raise LaserError(f"prompt row {i} ({len(r)} tokens) {what} the model's context of {ctx} positions")
    return rows


def _uniforms(
    rows: int,
    steps: int,
    cfg: SamplingConfig,
    generator: torch.Generator | None,
    row_seeds: Sequence[int] | None,
    device: torch.device,
) -> torch.Tensor | None:
    """One uniform in (0, 1] per (row, step), drawn up front (None when greedy).

    With ``row_seeds``, row i's numbers are the first ``steps`` of a CPU generator seeded with
    ``row_seeds[i]``: independent of the batch and of the device (one generator call per row).
    """
    if cfg.temperature == 0:
        return None
    if row_seeds is not None:
        draws = [torch.rand(steps, generator=torch.Generator().manual_seed(int(seed))) for seed in row_seeds]
        return (1.0 - torch.stack(draws)).to(device)
    gdev = generator.device if generator is not None else device
    return (1.0 - torch.rand((rows, steps), generator=generator, device=gdev)).to(device)


def _lut(ids: frozenset[int] | set[int], size: int, device: torch.device) -> torch.Tensor:
    """A boolean lookup table over token ids: lut[token] is True for the given ids."""
    lut = torch.zeros(size, dtype=torch.bool, device=device)
    if ids:
        lut[torch.tensor(sorted(ids), dtype=torch.long, device=device)] = True
    return lut


def _mask_4d(model: torch.nn.Module, mask_2d: torch.Tensor) -> torch.Tensor | None:
    """A ready 4-D [B, 1, 1, L] decode mask, when the model's attention accepts one.

    With one query per row, the decode mask is just the padding mask; building it once and passing
    views of it skips the model's per-step mask construction. Only for plain full-attention sdpa or
    eager models (a 4-D mask is used as-is by every layer, which would be wrong for sliding-window
    or hybrid layers); every other model gets the 2-D mask.
    """
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    impl = getattr(cfg, "_attn_implementation", None) or getattr(model.config, "_attn_implementation", None)
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None:
        if any(t != "full_attention" for t in layer_types):
            return None
    elif getattr(cfg, "sliding_window", None) or getattr(cfg, "attention_chunk_size", None):
        return None
    if getattr(cfg, "model_type", "") not in _FOUR_D_MASK_MODELS:
        return None
    if impl == "sdpa":
        return mask_2d[:, None, None, :]
    if impl == "eager":
        dtype = next(model.parameters()).dtype
        neg = torch.finfo(dtype).min
        return torch.zeros(mask_2d.shape, dtype=dtype, device=mask_2d.device).masked_fill_(~mask_2d, neg)[
            :, None, None, :
        ]
    return None


# Architectures whose decoder layers pass a 4-D mask straight to sdpa/eager attention: verified with
# transformers 5 to give the same tokens, log-probs and lp_z as the 2-D path. Others use the 2-D mask.
_FOUR_D_MASK_MODELS = frozenset(
    {"llama", "qwen2", "qwen3", "mistral", "gemma", "phi3", "olmo", "olmo2", "granite"}
)


class DecodeObserver(Protocol):
    """Watches the decoding loop (``laser bench`` times the in-loop score with one); the default does nothing.

    ``reading_scores()`` wraps the read of lp_z for the rows just fed their stop token;
    ``decode_step(rows, pending_rows, score_only)`` wraps one decode-step forward over ``rows`` batch
    rows, ``pending_rows`` of which are there only to have their score read (``score_only``: no row is
    generating any more, the step runs for the score alone).
    """

    def reading_scores(self) -> contextlib.AbstractContextManager[None]: ...

    def decode_step(self, rows: int, pending_rows: int, score_only: bool) -> contextlib.AbstractContextManager[None]: ...


class _Unobserved:
    def reading_scores(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def decode_step(self, rows: int, pending_rows: int, score_only: bool) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


@dataclass
class _Live:
    """Per-row decoding state of the rows still in the batch, in batch order."""

    alive: torch.Tensor  # [b] long: original row of each batch row
    generating: torch.Tensor  # [b] bool: has not emitted a stop token yet
    tokens: torch.Tensor  # [b, T] long: sampled tokens so far
    logprobs: torch.Tensor  # [b, T] float32
    positions: torch.Tensor  # [b, T] long: position of the token fed at each decode step
    mask: torch.Tensor  # [b, P + T + 1] bool: attention mask (prompt padding + generated columns)
    mask4: torch.Tensor | None  # [b, 1, 1, P + T + 1]: a ready 4-D decode mask, when the model takes one
    uniforms: torch.Tensor | None  # [b, T]: pre-drawn sampling numbers (None when greedy)

    def select(self, keep: torch.Tensor) -> _Live:
        return _Live(*(None if v is None else v[keep] for v in (
            self.alive, self.generating, self.tokens, self.logprobs, self.positions, self.mask, self.mask4,
            self.uniforms)))

    def flush(self, out_tokens: torch.Tensor, out_logprobs: torch.Tensor) -> None:
        """Write the batch rows back to their original rows."""
        out_tokens[self.alive] = self.tokens
        out_logprobs[self.alive] = self.logprobs


def _prefill(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, DynamicCache]:
    """The prompts' forward pass: last-position logits [B, V] and the filled KV cache, which has room
    to grow to ``mask``'s width (prompt + every token the loop can feed)."""
    P = ids.shape[1]
    cache = growing_cache(model, mask.shape[1])
    positions = (mask[:, :P].long().cumsum(dim=1) - 1).clamp_(min=0)
    kwargs = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
    out = model(input_ids=ids, attention_mask=mask[:, :P], position_ids=positions, past_key_values=cache,
                use_cache=True, **kwargs)
    return out.logits[:, -1], out.past_key_values


def _decode_step(
    model: torch.nn.Module, tokens: torch.Tensor, live: _Live, cache: DynamicCache, width: int, t: int
) -> tuple[torch.Tensor, DynamicCache]:
    """Feed each batch row its token of step ``t`` (1-based); the next logits [b, V] and the cache."""
    out = model(
        input_ids=tokens.unsqueeze(1),
        attention_mask=live.mask[:, :width] if live.mask4 is None else live.mask4[..., :width],
        position_ids=live.positions[:, t - 1 : t],
        past_key_values=cache,
        use_cache=True,
    )
    return out.logits[:, -1], out.past_key_values


def _rows_to_keep(
    live: _Live, pending: torch.Tensor | None, just_stopped: torch.Tensor | None, n_generating: int, last_step: bool
) -> torch.Tensor | None:
    """Batch rows that stay for the next step, or None to keep the batch as it is.

    After the last step only the rows awaiting their score stay; otherwise the batch is compacted
    once at least ``COMPACT_FRACTION`` of it is done (neither generating nor awaiting a score).
    """
    if last_step:
        return pending
    b = live.alive.numel()
    needed = n_generating + (0 if pending is None else pending.numel())
    if b - needed < max(1, math.ceil(b * COMPACT_FRACTION)):
        return None
    still = live.generating | just_stopped if pending is not None else live.generating
    return still.nonzero().squeeze(1)


def _decode(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask_buf: torch.Tensor,
    lengths: torch.Tensor,
    T: int,
    cfg: SamplingConfig,
    stops: frozenset[int],
    banned: set[int],
    z_id: int | None,
    u_buf: torch.Tensor | None,
    observer: DecodeObserver,
) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The decoding loop. Returns ((tokens[B, T], logprobs[B, T]) unmasked, lp_z[B]).

    Per-step state lives in batch order (:class:`_Live`, the rows still in the batch); rows are
    flushed to the original order whenever the batch is compacted and at the end, so a step only
    does plain column writes. ``u_buf``: one uniform in (0, 1] per (original row, step), drawn up
    front, so sampling does not depend on compaction (the same seed gives the same tokens with or
    without z).
    """
    device = ids.device
    B, P = ids.shape
    out_tok = torch.zeros((B, T), dtype=torch.long, device=device)
    out_lp = torch.zeros((B, T), dtype=torch.float32, device=device)
    lp_z = torch.full((B,), float("nan"), dtype=torch.float32, device=device)
    logits, cache = _prefill(model, ids, mask_buf)
    V = logits.shape[-1]
    if z_id is not None and z_id >= V:
        raise LaserError(f"z_id={z_id} is beyond the model's {V} output logits")
    ban = torch.tensor(sorted(banned), dtype=torch.long, device=device) if banned else None
    stop_lut = _lut({s for s in stops if s < V}, V, device) if stops else None
    live = _Live(
        alive=torch.arange(B, device=device), generating=torch.ones(B, dtype=torch.bool, device=device),
        tokens=out_tok.clone(), logprobs=out_lp.clone(),
        positions=lengths.unsqueeze(1) + torch.arange(T, device=device),  # token of step t at lengths[i] + t
        mask=mask_buf, mask4=_mask_4d(model, mask_buf), uniforms=u_buf,
    )
    pending: torch.Tensor | None = None  # batch rows fed their stop token in this step
    n_gen, t = B, 0
    while True:
        lg = logits.float()
        if pending is not None:  # these rows were just fed their stop token: read the score
            with observer.reading_scores():
                rows_lg = lg.index_select(0, pending)
                lp_z[live.alive.index_select(0, pending)] = rows_lg[:, z_id] - torch.logsumexp(rows_lg, dim=-1)
            pending = None
        if t == T:
            break
        tok, lp = _select_tokens(lg, ban, None if live.uniforms is None else live.uniforms[:, t], cfg)
        live.tokens[:, t], live.logprobs[:, t] = tok, lp
        t += 1
        hit = stop_lut[tok] & live.generating if stop_lut is not None else None
        n_hit = int(hit.sum()) if hit is not None else 0
        if n_hit:
            live.generating ^= hit
            n_gen -= n_hit
            if z_id is not None:
                pending = hit.nonzero().squeeze(1)
        if pending is None and (n_gen == 0 or t == T):
            break
        keep = _rows_to_keep(live, pending, hit, n_gen, t == T)
        if keep is not None:
            live.flush(out_tok, out_lp)
            if pending is not None:  # re-index the pending rows into the compacted batch
                where = torch.full((live.alive.numel(),), -1, dtype=torch.long, device=device)
                where[keep] = torch.arange(keep.numel(), device=device)
                pending = where[pending]
            cache.batch_select_indices(keep)
            live, tok = live.select(keep), tok[keep]
        n_pending = 0 if pending is None else int(pending.numel())
        with observer.decode_step(int(live.alive.numel()), n_pending, n_gen == 0 or t == T):
            logits, cache = _decode_step(model, tok, live, cache, P + t, t)
    live.flush(out_tok, out_lp)
    return (out_tok, out_lp), lp_z
