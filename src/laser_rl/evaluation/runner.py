"""``laser eval`` and ``laser score``: sample, verify and self-score; or score existing responses.

Evaluation (:func:`run_eval`) samples N responses per problem with the rollout engine, which reads
the self-reward score in the decoding loop (one extra step after EOS), verifies them with the task's
verifier and writes into the output folder:

- ``eval_config.json``: the settings that define the samples (model fingerprint, data, n, seed,
  sampling, score parameters, prompt style, stop ids), written before the first sample;
- ``samples.jsonl``: one record per problem, appended and flushed after every chunk of problems,
  with the reference pipeline's field names ``problem``, ``answer``, ``responses`` (decoded text,
  stop token removed), ``pred_answers``, ``acc_list``, ``self_rewarding_scores``, plus ``finished``,
  ``response_lengths`` (tokens, stop token included), ``mean_logprobs`` / ``min_logprobs`` (of the
  sampled tokens under the sampling distribution) and, with ``save_ids``, ``prompt_ids`` /
  ``response_ids`` (off by default to keep the file readable; ``laser score`` uses them when present);
- ``metrics.json`` / ``report.md`` / PNG plots, written atomically at the end.

Conventions:

- A truncated response (no stop token within ``max_new_tokens``) has no score: it gets
  ``self_rewarding_scores = 0.0`` (so it is predicted incorrect and never carries a weighted vote).
  Its answer is still extracted and verified as written.
- Resuming: rerunning with the same folder skips the problems already in ``samples.jsonl`` (an
  incomplete last line from a crash is dropped and redone). A different model, data, n, seed,
  sampling setting or score parameter is an error, not a silent mix; ``--limit`` and
  ``--batch-size`` may change. Randomness is seeded per response from ``(seed, problem index,
  response index)`` (:func:`response_seeds`; the sampler gives each row its own generator), so a
  problem gets the same samples whatever the batch size, ``--limit`` or resume point, and ``--n 4``
  draws the first four responses of ``--n 8``.
- ``--limit M``: the metrics and report cover the first M problems, even when the file holds more.
- Stop ids: :func:`laser_rl.integrations.hf.resolve_stop_ids` (EOS, the chat template's end-of-turn
  token, generation_config's EOS ids) plus ``laser.json``'s ``extra.stop_ids`` — the same set the
  trainer samples with. Never sampled: z, pad (unless it is a stop id) and embedding rows beyond the
  tokenizer's vocabulary (they decode to nothing).
- ``max_new_tokens`` defaults to ``laser.json``'s ``extra.max_new_tokens``, else 1024, capped to fit
  the model's context after the longest prompt of the data set.

Scoring (:func:`score_file`) adds ``self_rewarding_scores`` to an existing JSONL of responses with the
teacher-forced scorer. Token ids are preferred: ``prompt_ids`` / ``response_ids`` fields are used when
present; otherwise the prompt is rebuilt from ``problem`` and the response text is re-tokenised,
which can differ from the ids the model generated (spec §7.5) and so shift the score slightly.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from laser_rl.errors import LaserError
from laser_rl.evaluation.metrics import compute_metrics, load_records
from laser_rl.evaluation.scoring_model import ScoringModel, load_scoring_model, model_fingerprint
from laser_rl.io import check_output_dir, write_json_atomic, write_jsonl_atomic

CONFIG_FILE = "eval_config.json"
SAMPLES_FILE = "samples.jsonl"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
#: eval_config.json keys that must match for a resumed run to continue the same samples.
RESUME_KEYS = ("model_fingerprint", "data", "n", "seed", "sampling", "score", "prompt_style", "stop_ids",
               "equivalence")
DEFAULT_MAX_NEW_TOKENS = 1024
_FORMAT = 1


# --------------------------------------------------------------------------- eval


@dataclass
class EvalOptions:
    """Everything ``laser eval`` takes (see the CLI help for each field)."""

    model: str
    data: str
    n: int
    out: str
    limit: int | None = None
    batch_size: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int | None = None
    seed: int = 0
    token: str | None = None
    beta_v: float | None = None
    c_ref: float | None = None
    prompt_style: str = "auto"
    device: str | None = None
    dtype: str = "auto"
    save_ids: bool = False
    progress: bool = True
    force_token: bool = False
    overwrite: bool = False
    verifier: str = "auto"
    engine: str = "hf"


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LaserError(f"{name} must be a positive integer, got {value!r}")
    return value


def load_eval_data(spec: str, model_dir: str | os.PathLike[str], verifier: str = "auto") -> Any:
    """``--data`` → TaskData; the embedded task reads its options from the model folder's task.json.

    ``verifier``: ``auto`` (the data's own) or a name from :mod:`laser_rl.rewards.registry`.
    """
    from laser_rl.tasks.embedded import is_embedded_task
    from laser_rl.tasks.registry import load_task_data

    options: dict[str, Any] = {"model_dir": str(model_dir)} if is_embedded_task(spec) else {}
    options["verifier"] = verifier
    data = load_task_data(spec, **options)
    if data.problems is None:
        raise LaserError(f"--data {spec} is an endless training stream; evaluate a finite split (e.g. arith:test)")
    if not data.problems:
        raise LaserError(f"--data {spec}: no problems")
    return data


def _read_samples(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Records already in ``samples.jsonl``; an incomplete last line (a crash mid-write) is cut off."""
    if not path.is_file():
        return [], []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with path.open("r+b") as f:
            f.truncate(cut)
        print(f"laser eval: {path}: dropped an incomplete last line (it will be sampled again)", file=sys.stderr)
        if cut == 0:
            return [], []
    if not path.read_bytes().strip():
        return [], []
    return load_records(path)


def _check_resume(out: Path, config: dict[str, Any]) -> None:
    cfg_path = out / CONFIG_FILE
    if not cfg_path.is_file():
        if (out / SAMPLES_FILE).exists():
            raise LaserError(f"{out / SAMPLES_FILE} exists without {CONFIG_FILE}: cannot tell how it was made; use another --out")
        return
    try:
        old = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LaserError(f"{cfg_path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    diffs = [f"{k}: {old.get(k)!r} in the folder vs {config[k]!r} now" for k in RESUME_KEYS if old.get(k) != config[k]]
    if diffs:
        raise LaserError(
            f"{out} holds an evaluation with other settings ({'; '.join(diffs)}); use another --out "
            "or pass --overwrite to start over"
        )


def response_seeds(seed: int, first_problem: int, num_problems: int, n: int) -> list[int]:
    """Sampler seeds of the ``n`` responses of problems ``first_problem ..`` (problem-major order):
    each a hash of ``(seed, problem index, response index)``, so it does not depend on how the
    problems are batched."""
    import numpy as np

    return [
        int(np.random.SeedSequence([seed, i, j]).generate_state(1, dtype=np.uint64)[0])
        for i in range(first_problem, first_problem + num_problems)
        for j in range(n)
    ]


def sample_records(
    sm: ScoringModel,
    problems: Sequence[Any],
    prompt_ids: Sequence[list[int]],
    *,
    n: int,
    batch_size: int,
    sampling: Any,
    verifier: Any,
    generator: Any = None,
    row_seeds: Sequence[int] | None = None,
    save_ids: bool = False,
) -> list[dict[str, Any]]:
    """Sample n responses for each problem, verify and self-score them (the rollout pipeline), and
    build their ``samples.jsonl`` records. Randomness: one ``generator`` for all, or ``row_seeds``
    (one per response, problem-major)."""
    from laser_rl.rollout.pipeline import rollout_verify_score

    rb = rollout_verify_score(
        sm.engine(), sm.tokenizer, prompt_ids, [p.answer for p in problems], verifier, sampling=sampling, n=n,
        batch_size=batch_size, score=sm.params, generator=generator, row_seeds=row_seeds,
    )
    return rb.to_records(problems, n, save_ids)


def _prompts(sm: ScoringModel, problems: Sequence[str], style: str, what: str) -> list[list[int]]:
    """Prompt ids via the shared prompt builder; a tokenizer failure becomes a ``LaserError``."""
    from laser_rl.integrations.hf import build_prompts

    try:
        return build_prompts(sm.tokenizer, problems, style)  # type: ignore[arg-type]
    except LaserError:
        raise
    except Exception as e:  # tokenizers raise bare Exceptions (e.g. a character outside a char vocabulary)
        raise LaserError(
            f"{what}: the tokenizer of {sm.folder} cannot encode the {style}-style prompts ({e}); "
            "check --prompt-style and that the data suits this model"
        ) from None


def resolve_max_new_tokens(
    requested: int | None,
    saved_extra: Mapping[str, Any],
    context: int | None,
    longest_prompt: int,
    data: str,
    say: Callable[[str], None],
) -> int:
    """The response length limit: ``--max-new-tokens``, else ``laser.json``'s ``extra.max_new_tokens``
    (what the model was trained with), else 1024. A default is capped to fit the model's ``context``
    after the longest prompt (and said); an explicit flag that does not fit is an error."""
    if requested is not None:
        if context is not None and longest_prompt + requested > context:
            raise LaserError(
                f"--max-new-tokens {requested} + the longest prompt ({longest_prompt} tokens) exceeds the model's "
                f"context of {context} positions; use at most {context - longest_prompt}"
            )
        return requested
    saved = saved_extra.get("max_new_tokens")
    max_new = saved if isinstance(saved, int) and not isinstance(saved, bool) and saved > 0 else DEFAULT_MAX_NEW_TOKENS
    if context is not None and longest_prompt + max_new > context:
        if context - longest_prompt < 1:
            raise LaserError(f"{data}: a prompt of {longest_prompt} tokens fills the model's context of {context}")
        max_new = context - longest_prompt
        say(f"max_new_tokens capped at {max_new} (context {context} - longest prompt {longest_prompt})")
    return max_new


def run_eval(opts: EvalOptions, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) an evaluation; returns the metrics dict (also written to ``metrics.json``)."""
    from laser_rl.rollout.sampler import SamplingConfig, context_length

    say = log or (lambda msg: print(msg, file=sys.stderr))
    n = _positive_int(opts.n, "--n")
    _positive_int(opts.batch_size, "--batch-size")
    if opts.limit is not None:
        _positive_int(opts.limit, "--limit")
    _check_prompt_style(opts.prompt_style)
    out = check_output_dir(opts.out, opts.overwrite, resumable_marker=CONFIG_FILE)

    sm = load_scoring_model(opts.model, token=opts.token, beta_v=opts.beta_v, c_ref=opts.c_ref,
                            device=opts.device, dtype=opts.dtype, force_token=opts.force_token)
    sm.engine_name = opts.engine
    data = load_eval_data(opts.data, sm.folder, opts.verifier)
    problems = list(data.problems)
    total = len(problems) if opts.limit is None else min(opts.limit, len(problems))
    style = data.prompt_style if opts.prompt_style == "auto" else opts.prompt_style

    # Prompts of every problem (not only the first --limit): the default length limit below depends
    # on the longest one, and must not change when --limit does (resume checks the settings).
    all_prompt_ids = _prompts(sm, [p.problem for p in problems], style, f"--data {opts.data}")
    longest = max(len(ids) for ids in all_prompt_ids)
    max_new = resolve_max_new_tokens(opts.max_new_tokens, sm.params.extra, context_length(sm.model), longest,
                                     f"--data {opts.data}", lambda msg: say(f"laser eval: {msg}"))
    sampling = SamplingConfig(temperature=opts.temperature, top_p=opts.top_p, top_k=opts.top_k, max_new_tokens=max_new)
    config = _eval_config(opts, sm, data, sampling, style)

    if opts.overwrite and out.exists():  # start over (checked above: the user asked for it)
        shutil.rmtree(out)
    _check_resume(out, config)
    samples_path = out / SAMPLES_FILE
    done = _done_records(samples_path, problems, n, opts.data)
    todo = range(len(done), total)
    if len(done):
        say(f"laser eval: {len(done)} problems already in {samples_path}; sampling {len(todo)} more")
    if len(todo):
        out.mkdir(parents=True, exist_ok=True)
        if not (out / CONFIG_FILE).is_file():
            write_json_atomic(out / CONFIG_FILE, config)  # before the first sample: resume checks it
        done += _sample_problems(opts, sm, data.verifier, problems, all_prompt_ids, todo, sampling, samples_path)
    return write_metrics_and_report(out, done, total, data, config, say)


def _check_prompt_style(style: str) -> None:
    if style not in ("auto", "raw", "chat"):
        raise LaserError(f"--prompt-style must be auto, raw or chat, got {style!r}")


def _eval_config(opts: EvalOptions, sm: ScoringModel, data: Any, sampling: Any, style: str) -> dict[str, Any]:
    """``eval_config.json``: the settings that define the samples (:data:`RESUME_KEYS` must match on resume)."""
    return {
        "format": _FORMAT,
        "model": str(sm.folder.resolve()),
        "model_fingerprint": model_fingerprint(sm.folder),
        "data": opts.data,
        "data_name": data.name,
        "n": opts.n,
        "seed": opts.seed,
        "sampling": asdict(sampling),
        "score": {"token": sm.params.token, "token_id": sm.params.token_id, "beta_v": sm.params.beta_v,
                  "c_ref": sm.params.c_ref},
        "prompt_style": style,
        "stop_ids": sm.stop_ids,
        "equivalence": type(data.verifier).__name__,
        "engine": opts.engine,  # recorded, not checked on resume (like --batch-size)
    }


def _done_records(samples_path: Path, problems: Sequence[Any], n: int, data_spec: str) -> list[dict[str, Any]]:
    """The records a resumed run already has, each checked against its problem of the data."""
    done, locations = _read_samples(samples_path)
    if len(done) > len(problems):
        raise LaserError(f"{samples_path} has {len(done)} records but --data {data_spec} has only {len(problems)} problems")
    for i, rec in enumerate(done):
        if rec.get("problem") != problems[i].problem or str(rec.get("answer")) != problems[i].answer:
            raise LaserError(f"{locations[i]}: record does not match problem {i} of --data {data_spec}")
        if not isinstance(rec.get("responses"), list) or len(rec["responses"]) != n:
            raise LaserError(f"{locations[i]}: expected {n} responses")
    return done


def _sample_problems(
    opts: EvalOptions,
    sm: ScoringModel,
    verifier: Any,
    problems: Sequence[Any],
    all_prompt_ids: Sequence[list[int]],
    todo: range,
    sampling: Any,
    samples_path: Path,
) -> list[dict[str, Any]]:
    """Sample the problems ``todo`` a chunk at a time, appending each chunk's records to ``samples.jsonl``
    (flushed and synced: a crash loses at most the chunk in progress); returns the new records."""
    from tqdm import tqdm

    per_chunk = max(1, opts.batch_size // opts.n)
    new: list[dict[str, Any]] = []
    bar = tqdm(total=len(todo), unit="problem", desc="laser eval", disable=None if opts.progress else True)
    with samples_path.open("a", encoding="utf-8") as f:
        for start in range(todo.start, todo.stop, per_chunk):
            chunk = problems[start : min(start + per_chunk, todo.stop)]
            prompt_ids = all_prompt_ids[start : start + len(chunk)]
            seeds = response_seeds(opts.seed, start, len(chunk), opts.n)
            records = sample_records(sm, chunk, prompt_ids, n=opts.n, batch_size=opts.batch_size, sampling=sampling,
                                     verifier=verifier, row_seeds=seeds, save_ids=opts.save_ids)
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
            new += records
            bar.update(len(chunk))
    bar.close()
    return new


def write_metrics_and_report(
    out: Path, done: list[dict[str, Any]], total: int, data: Any, config: dict[str, Any], say: Callable[[str], None]
) -> dict[str, Any]:
    """Metrics (``metrics.json``) and the report over the first ``total`` records; returns the metrics."""
    from laser_rl.evaluation.report import write_report

    records = done[:total]
    warning = no_answer_warning(records, type(data.verifier).__name__)
    if warning:
        say(f"laser eval: warning: {warning}")
    metrics = compute_metrics(records, same_answer=data.verifier.same_answer, verdict=data.verdict)
    write_json_atomic(out / METRICS_FILE, metrics)
    notes = _notes(records)
    if total < len(done):
        notes.append(f"computed over the first {total} of the {len(done)} problems in {SAMPLES_FILE} (--limit)")
    settings = {k: config[k] for k in ("model", "data", "n", "seed", "prompt_style")}
    settings.update({"sampling": config["sampling"], "score": config["score"]})
    write_report(out, {"": metrics}, {"": records}, title=f"Evaluation: {data.name}", settings=settings, notes=notes)
    return metrics


#: Above this share of responses without an extractable answer, the verifier probably does not fit the data.
NO_ANSWER_WARN_SHARE = 0.5


def no_answer_warning(records: Sequence[Mapping[str, Any]], verifier_name: str) -> str | None:
    """A hint to choose another ``--verifier`` when most responses have no answer it can extract."""
    answers = [a for r in records for a in r["pred_answers"]]
    missing = sum(a is None for a in answers)
    if not answers or missing / len(answers) <= NO_ANSWER_WARN_SHARE:
        return None
    return (
        f"{missing}/{len(answers)} responses ({missing / len(answers):.0%}) have no answer {verifier_name} can "
        "extract; if the data's answers are not written that way, choose another --verifier "
        "(math: last \\boxed{}; exact: last \\boxed{} or last line, compared as text; arith: integer after the last #)"
    )


def _notes(records: Sequence[Mapping[str, Any]]) -> list[str]:
    n = sum(len(r["responses"]) for r in records)
    no_answer = sum(a is None for r in records for a in r["pred_answers"])
    truncated = sum(not f for r in records for f in r.get("finished", []))
    return [
        f"responses without an extracted answer: {no_answer}/{n} ({no_answer / max(n, 1):.1%})",
        f"truncated responses (no stop token; score set to 0): {truncated}/{n} ({truncated / max(n, 1):.1%})",
    ]


# --------------------------------------------------------------------------- score


def _int_list(value: Any, where: str, field: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise LaserError(f"{where}: field '{field}' must be a list of token ids")
    return value


def default_prompt_style(sm: ScoringModel) -> str:
    """laser.json's ``extra.prompt_style`` (the trainer saves it), else chat iff the tokenizer has a template."""
    saved = sm.params.extra.get("prompt_style")
    if saved in ("raw", "chat"):
        return saved
    return "chat" if getattr(sm.tokenizer, "chat_template", None) else "raw"


def score_file(
    model_dir: str,
    input_path: str,
    out_path: str,
    *,
    batch_size: int = 32,
    token: str | None = None,
    beta_v: float | None = None,
    c_ref: float | None = None,
    prompt_style: str = "auto",
    device: str | None = None,
    dtype: str = "auto",
    force_token: bool = False,
) -> int:
    """Add ``self_rewarding_scores`` to every record of ``input_path``; write ``out_path`` atomically.

    Returns the number of responses scored. Unfinished responses (``finished`` false) get 0, as in eval
    (``ScoreParams.score``'s rule).
    """
    import torch

    from laser_rl.rollout.scorer import score_responses

    _positive_int(batch_size, "--batch-size")
    _check_prompt_style(prompt_style)
    records, locations = load_records(input_path)
    for rec, where in zip(records, locations):  # everything before the model loads
        _check_score_record(rec, where)

    sm = load_scoring_model(model_dir, token=token, beta_v=beta_v, c_ref=c_ref, device=device, dtype=dtype,
                            force_token=force_token)
    style = default_prompt_style(sm) if prompt_style == "auto" else prompt_style
    prompts, responses, slots = _finished_pairs(sm, records, locations, style, input_path)
    rows = [(i, j) for i, r in enumerate(records) for j in range(len(r["responses"]))]  # every response
    lp_z = torch.full((len(rows),), float("nan"))
    finished = torch.zeros(len(rows), dtype=torch.bool)
    if prompts:
        row_of = {slot: k for k, slot in enumerate(rows)}
        at = torch.tensor([row_of[slot] for slot in slots], dtype=torch.long)
        lp_z[at] = score_responses(
            sm.model, prompts, responses, z_id=sm.params.token_id, pad_id=sm.pad_id, stop_ids=sm.stop_ids,
            eos_id=int(sm.tokenizer.eos_token_id), batch_size=batch_size,
        ).float().cpu()
        finished[at] = True
    values = sm.params.score(lp_z, finished=finished).tolist()  # unfinished: no EOS, so no score (0)
    out_records = [dict(r, self_rewarding_scores=[]) for r in records]
    for (i, j), v, fin in zip(rows, values, finished.tolist()):
        if fin and not math.isfinite(v):
            raise LaserError(f"{locations[i]}: response {j} got a non-finite score ({v}): check z and c_ref")
        out_records[i]["self_rewarding_scores"].append(v)
    write_jsonl_atomic(out_path, out_records)
    return len(slots)


def _check_score_record(rec: Mapping[str, Any], where: str) -> None:
    """A record ``laser score`` can read: ``responses``, a prompt (``prompt_ids`` or ``problem``), and
    optional ``response_ids`` / ``finished`` of the same length."""
    responses = rec.get("responses")
    if not isinstance(responses, list) or not responses:
        raise LaserError(f"{where}: missing or empty field 'responses'")
    if not all(isinstance(t, str) for t in responses):
        raise LaserError(f"{where}: field 'responses' must be a list of strings")
    n = len(responses)
    if "prompt_ids" in rec:
        _int_list(rec["prompt_ids"], where, "prompt_ids")
    elif not isinstance(rec.get("problem"), str):
        raise LaserError(f"{where}: missing field 'problem' (or 'prompt_ids')")
    if "response_ids" in rec:
        ids = rec["response_ids"]
        if not isinstance(ids, list) or len(ids) != n:
            raise LaserError(f"{where}: field 'response_ids' must hold {n} lists, one per response")
        for j, r in enumerate(ids):
            _int_list(r, where, f"response_ids[{j}]")
    fin = rec.get("finished")
    if fin is not None and (not isinstance(fin, list) or len(fin) != n or not all(isinstance(v, bool) for v in fin)):
        raise LaserError(f"{where}: field 'finished' must be a list of {n} booleans")


def _finished_pairs(
    sm: ScoringModel, records: Sequence[Mapping[str, Any]], locations: Sequence[str], style: str, input_path: str
) -> tuple[list[list[int]], list[list[int]], list[tuple[int, int]]]:
    """(prompt ids, response ids, (record, response) slot) of every finished response: the records' own
    ids when present, else the prompt rebuilt from ``problem`` and the response text re-tokenised."""
    need_prompt = [i for i, r in enumerate(records) if "prompt_ids" not in r]
    built = _prompts(sm, [records[i]["problem"] for i in need_prompt], style, input_path)
    prompt_of = dict(zip(need_prompt, built))
    prompts: list[list[int]] = []
    responses: list[list[int]] = []
    slots: list[tuple[int, int]] = []
    for i, rec in enumerate(records):
        p_ids = rec["prompt_ids"] if "prompt_ids" in rec else prompt_of[i]
        fin = rec.get("finished") or [True] * len(rec["responses"])
        for j, text in enumerate(rec["responses"]):
            if not fin[j]:
                continue  # no EOS, no score: it keeps 0
            if "response_ids" in rec:
                r_ids = rec["response_ids"][j]
            else:
                try:
                    r_ids = sm.tokenizer.encode(text, add_special_tokens=False)
                except Exception as e:  # tokenizers raise bare Exceptions
                    raise LaserError(f"{locations[i]}: response {j} cannot be tokenised ({e})") from None
            prompts.append(p_ids)
            responses.append(r_ids)
            slots.append((i, j))
    return prompts, responses, slots
