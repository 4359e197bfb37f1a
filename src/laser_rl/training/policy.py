"""One forward pass that yields the policy's token log-probs, its entropy and the self-reward input lp_z.

The wrapper is an ``nn.Module`` whose ``forward`` does all the work, so DDP/FSDP (through
accelerate) see every parameter used inside ``forward`` and synchronise gradients as usual.

It runs the decoder and then the LM head itself, a chunk of rows at a time, instead of calling the
model's forward: that forward would materialise ``[B, L, V]`` logits. What the model's forward does
to the head's output (soft-capping, scaling) is therefore reproduced here by :class:`LogitTransform`,
read from the config by :func:`logit_transform` and checked against the model's own forward once,
when the wrapper is built, so that training log-probs and lp_z are what the sampler and the scorer
(which both call the model's forward) see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from laser_rl.errors import LaserError


@dataclass(frozen=True)
class LogitTransform:
    """``logits = softcap · tanh(scale · head(h) / softcap)``; without ``softcap``: ``scale · head(h)``.

    The model's own last step after the LM head, before any sampling temperature (the sampler divides
    the model's final logits by T, so T applies after the soft-cap).
    """

    scale: float = 1.0
    softcap: float | None = None

    def __call__(self, logits: Tensor) -> Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


# config attribute → how the causal-LM forward (transformers 5.23) applies it to the head's output.
# Multiplicative ones compose into one scale (no family sets two); soft-capping comes last.
_MULTIPLY = ("logit_scale", "lm_head_multiplier", "output_multiplier")
_DIVIDE = ("logits_scaling",)
_SOFTCAP = "final_logit_softcapping"


def logit_transform(config: object) -> LogitTransform:
    """The transform a causal LM's forward applies to ``lm_head(hidden)``, read from its config.

    Read from the text config (``config.get_text_config()``, so multimodal wrappers work too):

    - ``final_logit_softcapping`` c: ``c · tanh(logits / c)`` — Gemma 2, Gemma 3, Gemma 3n, Gemma 4,
      VaultGemma, nanochat, Inkling 2, Mistral Large 4; MuseSpark / MuseGlimmer after their multiplier.
    - ``logits_scaling`` s: ``logits / s`` — Granite, Granite-MoE (-shared, -hybrid, SWA), Granite
      vision/docling; MiniCPM3 divides the hidden state by it instead, the same for a bias-free head.
    - ``logit_scale`` s: ``logits · s`` — Cohere, Cohere 2, Cohere 2 MoE, Cohere Compass.
    - ``lm_head_multiplier`` m: ``logits · m`` — Falcon-H1.
    - ``output_multiplier`` m: ``logits · m`` before the soft-cap — MuseSpark, MuseGlimmer.

    An unset attribute (absent or ``None``) is the identity. Attribute names are not semantics: HyperCLOVA X
    *multiplies* by ``logits_scaling``, and MPT's ``logit_scale`` is ignored by its forward. Such cases
    (and any transform no attribute names) are caught by :func:`check_logit_transform`, which
    :class:`PolicyWithScore` runs when it is built.
    """
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config

    def value(name: str) -> float | None:
        v = getattr(cfg, name, None)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise LaserError(f"model config field {name}={v!r}: expected a finite number > 0 (or null)")
        return float(v)

    scale = 1.0
    for name in _MULTIPLY:
        scale *= value(name) or 1.0
    for name in _DIVIDE:
        scale /= value(name) or 1.0
    return LogitTransform(scale=scale, softcap=value(_SOFTCAP))


def check_logit_transform(model: nn.Module, transform: LogitTransform, probe_length: int = 8) -> None:
    """Raise :class:`LaserError` when decoder → LM head → ``transform`` differs from ``model(ids).logits``.

    One no-grad forward of ``probe_length`` tokens in eval mode (the ids are arbitrary: any input
    exposes a wrong scale; a soft-cap shows once logits approach it). Both sides apply the transform
    in the model's dtype, so they agree to a few ulps; the tolerance is 16 ulps of the largest logit.
    Skipped when the weights are not materialised here (meta device, or already sharded DTensors):
    the rank that holds the real weights runs it.
    """
    head = model.get_output_embeddings()
    if not _materialised(model):
        return
    vocab = head.weight.shape[0]
    device = model.get_input_embeddings().weight.device
    ids = torch.arange(probe_length, device=device).remainder(vocab).unsqueeze(0)  # [1, n]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = model(input_ids=ids, use_cache=False).logits  # [1, n, V']
            hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state  # [1, n, H]
            got = transform(F.linear(hidden, head.weight, head.bias))  # [1, n, V]
    finally:
        model.train(was_training)
    name = type(model).__name__
    if got.shape != want.shape:
        raise LaserError(f"{name}: its forward returns logits of shape {tuple(want.shape)}, but its LM head gives "
                         f"{tuple(got.shape)}; the training pass cannot reproduce this model's logits")
    want, got = want.float(), got.float()
    largest = want.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).abs().max().item()
    tol = 16 * torch.finfo(head.weight.dtype).eps * (1.0 + largest)
    diff = (got.to(want.device) - want).abs().max().item()  # inf / NaN (masked logits) fail the test below
    if not diff <= tol:
        raise LaserError(
            f"{name}: its forward changes the LM head's logits in a way the model config does not describe "
            f"(read from the config: scale={transform.scale:g}, final_logit_softcapping={transform.softcap}; "
            f"max |difference| {diff:.3g} > {tol:.3g}); training log-probs would differ from the sampler's"
        )


def _materialised(model: nn.Module) -> bool:
    """Whether every weight is a real, whole tensor on this process (not meta, not an FSDP2 shard)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        DTensor = ()  # noqa: N806 - isinstance(x, ()) is False
    return not any(p.is_meta or isinstance(p, DTensor) for p in model.parameters())


def _chunk_logprobs(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, inv_temp: Tensor, transform: LogitTransform
) -> tuple[Tensor, Tensor]:
    """(log p(target), entropy of p) for one chunk; p = softmax(transform(head(hidden)) / T), float32."""
    logits = transform(F.linear(hidden, weight, bias).float()) * inv_temp.unsqueeze(1)  # [n, V]
    lse = logits.logsumexp(dim=-1)  # [n]
    logp = logits.gather(1, targets.unsqueeze(1)).squeeze(1) - lse
    with torch.no_grad():  # a metric: no graph, and the [n, V] temporaries die with this chunk
        log_probs = logits - lse.unsqueeze(1)
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return logp, entropy


def chunked_logprobs_and_entropy(
    hidden: Tensor,
    head: nn.Linear,
    targets: Tensor,
    temperature: float | Tensor = 1.0,
    chunk_size: int = 1024,
    transform: LogitTransform = LogitTransform(),  # noqa: B008 - frozen, so one shared default is safe
) -> tuple[Tensor, Tensor]:
    """``(log p[target], H(p))``, each ``[N]`` float32, for ``hidden`` ``[N, H]`` and ``targets`` ``[N]``,
    where ``p = softmax(transform(head(hidden)) / T)``.

    ``temperature`` is a number or a per-row ``[N]`` tensor. Logits are materialised in float32 one
    chunk of ``chunk_size`` rows at a time and recomputed in the backward pass (activation
    checkpointing), so memory stays O(chunk × vocab) instead of O(tokens × vocab). The entropy has no
    gradient (it is a metric).
    """
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    temp = torch.as_tensor(temperature, dtype=torch.float32, device=hidden.device).expand(hidden.shape[0])
    inv_temp = 1.0 / temp
    logps, entropies = [], []
    for h, t, it in zip(hidden.split(chunk_size), targets.split(chunk_size), inv_temp.split(chunk_size)):
        if torch.is_grad_enabled() and h.requires_grad:
            lp, ent = checkpoint(_chunk_logprobs, h, head.weight, head.bias, t, it, transform, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(h, head.weight, head.bias, t, it, transform)
        logps.append(lp)
        entropies.append(ent)
    return torch.cat(logps), torch.cat(entropies)


def chunked_token_logprobs(
    hidden: Tensor, head: nn.Linear, targets: Tensor, temperature: float | Tensor = 1.0, chunk_size: int = 1024
) -> Tensor:
    """log softmax(head(hidden) / T)[target] → ``[N]`` float32, no logit transform; see
    :func:`chunked_logprobs_and_entropy`."""
    return chunked_logprobs_and_entropy(hidden, head, targets, temperature, chunk_size)[0]


@dataclass
class PolicyOutput:
    token_logprobs: Tensor  # [B, L-1] float32: log π(input_ids[:, t+1] | ≤ t) / T where pred_mask, else 0
    lp_z: Tensor  # [B] float32: untempered log π(z | x, y, EOS) at eos_column, NaN where not finished
    # [B, L-1] float32, no grad: entropy (nats) of the tempered next-token distribution softmax(logits / T)
    # at column t where pred_mask, else 0. The step's policy entropy is entropy[pred_mask].mean().
    entropy: Tensor


class PolicyWithScore(nn.Module):
    """Wrap a Hugging Face causal LM; see :meth:`forward`.

    Building it reads the model's logit transform from its config and checks it against the model's
    own forward (:func:`check_logit_transform`); a model whose logits cannot be reproduced is refused.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 1024) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.logit_transform = logit_transform(model.config)
        check_logit_transform(model, self.logit_transform)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        pred_mask: Tensor,
        eos_column: Tensor,
        finished: Tensor,
        temperature: float = 1.0,
        with_score: bool = True,
    ) -> PolicyOutput:
        """One pass over a right-padded batch with z already appended after EOS (spec §2.3).

        - ``pred_mask`` ``[B, L-1]``: True at column t when token t+1 is a response token (the
          policy-gradient mask; the z column is never in it).
        - ``eos_column`` ``[B]``: column of EOS; the logits there predict z = ``input_ids[eos+1]``.
        - Logits are the model's own (its soft-cap / scaling applied). Token log-probs and the entropy
          use logits / ``temperature`` (the sampling distribution; ``temperature`` must be > 0); lp_z
          always uses untempered float32 logits (spec §7.4). ``with_score=False`` skips lp_z (all NaN).
        """
        t = float(temperature)
        if not (math.isfinite(t) and t > 0):
            raise LaserError(
                f"temperature={temperature!r}: the training forward needs a finite temperature > 0 "
                "(greedy decoding, temperature 0, has no log-probs to train on)"
            )
        decoder = self.model.get_decoder()
        hidden = decoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # [B, L, H]
        head = self.model.get_output_embeddings()
        B, L = input_ids.shape
        # The EOS column predicts the appended z, so lp_z is the same shifted gather as the token
        # log-probs: both go through one chunked head pass (z rows untempered, spec §7.4).
        cols = torch.arange(L - 1, device=input_ids.device).unsqueeze(0)
        eos_mask = (cols == eos_column.unsqueeze(1)) & finished.unsqueeze(1) if with_score else torch.zeros_like(pred_mask)
        select = pred_mask | eos_mask
        is_z = eos_mask[select]
        temps = torch.where(is_z, 1.0, t)
        lp, ent = chunked_logprobs_and_entropy(
            hidden[:, :-1][select], head, input_ids[:, 1:][select], temps, self.chunk_size, self.logit_transform
        )
        token_logprobs = hidden.new_zeros(pred_mask.shape, dtype=torch.float32).masked_scatter(pred_mask, lp[~is_z])
        entropy = torch.zeros_like(token_logprobs).masked_scatter(pred_mask, ent[~is_z])
        lp_z = torch.full((B,), float("nan"), dtype=torch.float32, device=input_ids.device)
        if with_score:
            lp_z = lp_z.masked_scatter(finished, lp[is_z])
        return PolicyOutput(token_logprobs, lp_z, entropy)
