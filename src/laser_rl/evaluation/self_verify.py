"""Generative self-verification, the "two-template" baseline LaSeR's score replaces (issue 24).

The same model reads x + y + a verification template and states a verdict; the score is

    p_yes = p(yes | x, y, template) / (p(yes | ...) + p(no | ...)) = sigmoid(logit_yes − logit_no),

the next-token distribution after the template, normalised over the two verdict tokens. The tokens
are the first tokens of the verdict words (default ``yes`` / ``no``) in the model's own tokenizer,
never hard-coded ids; write the template so that the word follows it directly (e.g. a template
ending in ``"Answer yes or no:"`` with words ``" yes"`` / ``" no"`` for a BPE tokenizer).

Cost, per verified response: ``prefill_tokens`` = len(x) + len(y) + len(template) (the pass re-reads
the whole conversation; a prefix cache shared with generation would save the x + y part),
``decode_tokens`` = 1 (the verdict token whose distribution is read), and ``seconds`` (each batch's
wall time shared equally by its rows). LaSeR reads its score in the sampling loop: one decode step
after EOS, no prefill. Only finished responses are verified, as only they get a self-reward score;
an unfinished one gets score 0 and no cost.

:func:`self_verify` is the batched library function (HF causal LMs); :func:`refresh_eval_baselines`
adds the written verdict and, optionally, this pass to a ``laser eval`` folder: scores are cached in
``self_verify.jsonl`` (one line per problem, the ``self_verify_*`` fields of
:mod:`laser_rl.evaluation.metrics`) next to ``self_verify.json`` (template, words, token ids, model),
and ``metrics.json`` / ``report.md`` are rewritten with the baselines.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from laser_rl.errors import LaserError
from laser_rl.evaluation.metrics import SELF_VERIFY_COST, load_records
from laser_rl.evaluation.verdict import VerdictReader, attach_verdicts
from laser_rl.io import write_json_atomic, write_jsonl_atomic

SCORE_FIELD = "self_verify_scores"
CACHE_FILE = "self_verify.jsonl"
SPEC_FILE = "self_verify.json"


@dataclass(frozen=True)
class SelfVerifySpec:
    """The verification template appended after x + y, and the two verdict words (yes first)."""

    template: str
    words: tuple[str, str] = ("yes", "no")

    def as_extra(self) -> dict[str, Any]:
        """How a base model records the template it learned in SFT (its laser.json ``extra``)."""
        return {"verify_template": self.template, "verify_words": list(self.words)}

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> SelfVerifySpec | None:
        """The template a base model learned in SFT (``laser base --verify-batch``), read back from its laser.json
        ``extra``; None when it learned none."""
        template, words = extra.get("verify_template"), extra.get("verify_words")
        if not template or not words:
            return None
        return cls(str(template), (str(words[0]), str(words[1])))


@dataclass
class SelfVerifyResult:
    """Scores and cost of one :func:`self_verify` call, N rows in input order."""

    scores: torch.Tensor  # float32[N]: p(yes) normalised over {yes, no}
    prefill_tokens: torch.Tensor  # long[N]: x + y + template tokens read by the pass
    decode_tokens: torch.Tensor  # long[N]: 1, the verdict token
    seconds: torch.Tensor  # float64[N]: each batch's wall time / its rows


def verdict_token_ids(tokenizer: Any, words: Sequence[str]) -> tuple[int, int]:
    """(yes id, no id): the first token of each word in ``tokenizer``; ``LaserError`` when a word does not
    encode (or only to the unknown token) or both start with the same token."""
    if len(words) != 2 or not all(isinstance(w, str) and w for w in words):
        raise LaserError(f"--self-verify-words: expected two non-empty words (yes,no), got {list(words)!r}")
    ids = []
    for w in words:
        try:
            enc = list(tokenizer.encode(w, add_special_tokens=False))
        except Exception as e:  # tokenizers raise bare Exceptions for characters outside the vocabulary
            raise LaserError(f"--self-verify-words: the tokenizer cannot encode {w!r} ({e})") from None
        unk = getattr(tokenizer, "unk_token_id", None)
        if not enc or (unk is not None and enc[0] == unk):
            raise LaserError(f"--self-verify-words: {w!r} is not in the tokenizer's vocabulary")
        ids.append(int(enc[0]))
    if ids[0] == ids[1]:
        raise LaserError(f"--self-verify-words: {words[0]!r} and {words[1]!r} start with the same token ({ids[0]})")
    return ids[0], ids[1]


def self_verify(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    template_ids: Sequence[int],
    *,
    yes_id: int,
    no_id: int,
    pad_id: int,
    batch_size: int = 32,
) -> SelfVerifyResult:
    """p(yes) after prompt + response + template for N id pairs, batched: one forward per batch that
    keeps only the last position's logits (left padding puts every template's end there)."""
    from laser_rl.rollout.sampler import (
        as_id_rows,
        check_ids_in_vocab,
        check_token_id,
        context_length,
        vocab_size,
    )

    vocab = vocab_size(model)
    yes_id, no_id = check_token_id(yes_id, vocab, "yes_id"), check_token_id(no_id, vocab, "no_id")
    pad_id = check_token_id(pad_id, vocab, "pad_id")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LaserError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    p_rows, r_rows = as_id_rows(prompts, "prompt"), as_id_rows(responses, "response")
    if len(p_rows) != len(r_rows):
        raise LaserError(f"got {len(p_rows)} prompts but {len(r_rows)} responses")
    template = [int(t) for t in template_ids]
    if not template:
        raise LaserError("the verification template encodes to no tokens")
    check_ids_in_vocab(template, vocab, "template")
    ctx = context_length(model)
    seqs = [p + r + template for p, r in zip(p_rows, r_rows)]
    for i, (p, r, s) in enumerate(zip(p_rows, r_rows, seqs)):
        check_ids_in_vocab(p + r, vocab, f"row {i}")
        if ctx is not None and len(s) > ctx:
            raise LaserError(f"row {i}: prompt + response + template is {len(s)} tokens, longer than the model's "
                             f"context of {ctx} positions")

    from laser_rl.rollout.scorer import last_token_logprobs

    n = len(seqs)
    lp, seconds = last_token_logprobs(model, seqs, [yes_id, no_id], pad_id, batch_size)  # [N, 2], [N]
    scores = torch.sigmoid(lp[:, 0] - lp[:, 1])  # p(yes) / (p(yes) + p(no))
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    return SelfVerifyResult(scores=scores, prefill_tokens=lengths, decode_tokens=torch.ones(n, dtype=torch.long),
                            seconds=seconds)


# --------------------------------------------------------------------------- eval folders


def _response_ids(sm: Any, rec: Mapping[str, Any], j: int) -> list[int]:
    """Response j's ids without its stop token: the saved ids when present (cut before the first stop id),
    else the decoded text re-tokenised (which can differ from the sampled ids, as in ``laser score``)."""
    if "response_ids" in rec:
        ids = list(rec["response_ids"][j])
        stops = set(sm.stop_ids)
        cut = next((t for t, v in enumerate(ids) if v in stops), len(ids))
        return ids[:cut]
    return list(sm.tokenizer.encode(rec["responses"][j], add_special_tokens=False))


def self_verify_records(
    sm: Any, records: Sequence[Mapping[str, Any]], style: str, spec: SelfVerifySpec, batch_size: int = 32
) -> list[dict[str, list[float]]]:
    """The ``self_verify_*`` fields of each record (finished responses verified in one batched pass)."""
    from laser_rl.integrations.hf import build_prompts

    yes_id, no_id = verdict_token_ids(sm.tokenizer, spec.words)
    template = list(sm.tokenizer.encode(spec.template, add_special_tokens=False))
    prompts_by_record = build_prompts(sm.tokenizer, [r["problem"] for r in records], style)  # type: ignore[arg-type]
    slots = [(i, j) for i, r in enumerate(records) for j, f in enumerate(r.get("finished") or [True] * len(r["responses"]))
             if f]
    res = self_verify(sm.model, [prompts_by_record[i] for i, _ in slots], [_response_ids(sm, records[i], j) for i, j in slots],
                      template, yes_id=yes_id, no_id=no_id, pad_id=sm.pad_id, batch_size=batch_size)
    out = [{SCORE_FIELD: [0.0] * len(r["responses"]), **{f: [0] * len(r["responses"]) for f in SELF_VERIFY_COST.values()}}
           for r in records]
    values = zip(res.scores.tolist(), res.prefill_tokens.tolist(), res.decode_tokens.tolist(), res.seconds.tolist())
    for (i, j), (score, prefill, decode, secs) in zip(slots, values):
        out[i][SCORE_FIELD][j] = score
        out[i][SELF_VERIFY_COST["prefill_tokens"]][j] = prefill
        out[i][SELF_VERIFY_COST["decode_tokens"]][j] = decode
        out[i][SELF_VERIFY_COST["seconds"]][j] = secs
    return out


def _cached_self_verify(
    out: Path, records: Sequence[Mapping[str, Any]], spec: SelfVerifySpec, load_model: Callable[[], Any], style: str,
    batch_size: int, say: Callable[[str], None],
) -> list[dict[str, Any]]:
    """The self-verify fields of ``records``: those already in ``self_verify.jsonl`` for the same spec and
    model are reused, the rest computed (and the cache rewritten)."""
    from laser_rl.evaluation.runner import CONFIG_FILE

    model_id = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8")).get("model_fingerprint")
    header = {**asdict(spec), "words": list(spec.words), "model_fingerprint": model_id, "prompt_style": style}
    cached: list[dict[str, Any]] = []
    spec_path, cache_path = out / SPEC_FILE, out / CACHE_FILE
    if spec_path.is_file() and cache_path.is_file():
        old = json.loads(spec_path.read_text(encoding="utf-8"))
        if {k: old.get(k) for k in header} == header:
            cached = load_records(cache_path)[0] if cache_path.stat().st_size else []
    usable = 0  # the cache is a prefix of the records (problems are evaluated in order)
    while usable < min(len(cached), len(records)) and len(cached[usable].get(SCORE_FIELD, [])) == len(
        records[usable]["responses"]
    ):
        usable += 1
    cached = cached[:usable]
    if len(cached) < len(records):
        sm = load_model()
        yes_id, no_id = verdict_token_ids(sm.tokenizer, spec.words)
        say(f"self-verify: {len(records) - len(cached)} problems with template {spec.template!r} "
            f"(yes {spec.words[0]!r} = id {yes_id}, no {spec.words[1]!r} = id {no_id})")
        cached += self_verify_records(sm, records[len(cached):], style, spec, batch_size)
        write_json_atomic(spec_path, {**header, "yes_id": yes_id, "no_id": no_id})
        write_jsonl_atomic(cache_path, cached)
    return cached


def refresh_eval_baselines(
    out: str | os.PathLike[str],
    data: Any,
    *,
    limit: int | None = None,
    verdict: VerdictReader | None = None,
    self_verify_spec: SelfVerifySpec | None = None,
    load_model: Callable[[], Any] | None = None,
    batch_size: int = 32,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Add the written verdict (``verdict``, default ``data.verdict``) and the self-verification pass to a
    finished ``laser eval`` folder's metrics and report; returns the metrics. ``load_model`` gives the
    ``ScoringModel`` (called only when scores are missing from the cache)."""
    from laser_rl.evaluation.runner import CONFIG_FILE, SAMPLES_FILE, write_metrics_and_report

    say = log or (lambda msg: print(f"laser eval: {msg}", file=sys.stderr))
    folder = Path(out)
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    everything = load_records(folder / SAMPLES_FILE)[0]
    total = len(everything) if limit is None else min(limit, len(everything))
    records = everything[:total]  # the metrics cover these (--limit); the rest keep their note
    reader = verdict if verdict is not None else getattr(data, "verdict", None)
    if reader is not None:
        records = attach_verdicts(records, reader)
    if self_verify_spec is not None:
        if load_model is None:
            raise LaserError("self-verification needs the model (load_model)")
        fields = _cached_self_verify(folder, records, self_verify_spec, load_model, config["prompt_style"],
                                     batch_size, say)
        records = [{**r, **f} for r, f in zip(records, fields)]
    return write_metrics_and_report(folder, records + everything[total:], total, data, config, say)


__all__ = [
    "SelfVerifyResult",
    "SelfVerifySpec",
    "refresh_eval_baselines",
    "self_verify",
    "self_verify_records",
    "verdict_token_ids",
]
