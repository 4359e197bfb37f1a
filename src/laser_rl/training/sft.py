"""Supervised training of the embedded tiny base model (``laser base``, ``laser demo``).

The RL experiment needs an *imperfect* starting policy, like Qwen2.5-7B-Base in the paper: one
that solves some problems at temperature 1 (so GRPO groups have signal) but far from all (so RL has
room). Teacher forcing on generated solutions gets there quickly, and accuracy jumps sharply
(a prototype went 3% → 42% between steps 400 and 800), so training stops on **measured accuracy**
(first evaluation ≥ ``target_accuracy``), not after a fixed number of steps, with a step cap.

Accuracy is always measured on training-stream problems the run never trains on (stream positions
far beyond any training position), never on the test split. The reported accuracy and c_ref come from
a fresh set of problems after stopping, so the stopping rule's selection does not inflate them.

The saved folder is an ordinary Hugging Face model folder plus ``task.json`` (the task, hence the same
test split) and ``laser.json`` (z, c_ref ± std, β_v derived from c_ref, the base accuracy, stop ids).
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laser_rl.core import DEFAULT_TARGET_LOGPROB
from laser_rl.errors import LaserError
from laser_rl.io import check_output_dir
from laser_rl.tasks.arith import ArithConfig, solution
from laser_rl.tasks.base import Problem
from laser_rl.tasks.char_tokenizer import EOS_TOKEN

# Stream positions used for measurements: training reads positions [0, steps·batch), far below.
EVAL_OFFSET = 10**9
FINAL_OFFSET = 2 * 10**9
VERIFY_OFFSET = 5 * 10**8  # verification examples (``verify_batch``): their own stream positions
#: The band where RL has room to improve (issue 3); a final accuracy outside it prints a warning.
TARGET_BAND = (0.25, 0.60)


@dataclass
class SFTConfig:
    """Hyperparameters of ``laser base`` (defaults: what the prototype measured on 2 CPU cores)."""

    seed: int = 0
    max_steps: int = 1500
    target_accuracy: float = 0.35
    lr: float = 2e-3
    batch_size: int = 128
    eval_every: int = 50
    eval_problems: int = 256
    final_problems: int = 512  # fresh problems for the reported accuracy and c_ref
    target_logprob: float = DEFAULT_TARGET_LOGPROB  # β_v = 1 / (target_logprob − c_ref)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # Verification examples (off by default): x + y + template -> verdict word (see verify_batch).
    verify_batch: int = 0  # verification examples added to every step (0 = none: plain SFT)
    verify_template: str = ""
    verify_words: tuple[str, str] = ("1", "0")

    def validate(self) -> None:
        """Raise ``LaserError`` naming the offending ``--flag``."""
        checks: list[tuple[str, bool]] = [
            ("--seed", isinstance(self.seed, int) and self.seed >= 0),
            ("--max-steps", isinstance(self.max_steps, int) and self.max_steps >= 1),
            ("--target-accuracy", 0.0 < self.target_accuracy <= 1.0),
            ("--lr", math.isfinite(self.lr) and self.lr > 0),
            ("--batch-size", isinstance(self.batch_size, int) and self.batch_size >= 1),
            ("--eval-every", isinstance(self.eval_every, int) and self.eval_every >= 1),
            ("--eval-problems", isinstance(self.eval_problems, int) and self.eval_problems >= 1),
            ("--final-problems", isinstance(self.final_problems, int) and self.final_problems >= 1),
            ("--target-logprob", math.isfinite(self.target_logprob) and self.target_logprob < 0),
            ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0),
            ("grad_clip", math.isfinite(self.grad_clip) and self.grad_clip > 0),
            ("--verify-batch", isinstance(self.verify_batch, int) and self.verify_batch >= 0),
        ]
        for name, ok in checks:
            if not ok:
                value = getattr(self, name.lstrip("-").replace("-", "_"))
                raise LaserError(f"{name}: invalid value {value!r}")
        if self.verify_batch:
            words = self.verify_words
            if not isinstance(self.verify_template, str) or not self.verify_template.strip():
                raise LaserError("--verify-template: --verify-batch > 0 needs a non-empty template")
            if len(words) != 2 or not all(isinstance(w, str) and len(w) == 1 and not w.isspace() and w not in "<>"
                                          for w in words):
                raise LaserError(f"--verify-words: expected two single characters YES,NO, got {list(words)!r}")
            if words[0] == words[1]:
                raise LaserError(f"--verify-words: the yes and no words are the same ({words[0]!r})")
            if any(c.isspace() or c in "<>" for c in self.template_chars):
                raise LaserError(f"--verify-template: no spaces or '<', '>' (character tokenizer) except in the stop "
                                 f"token {EOS_TOKEN}, got {self.verify_template!r}")

    @property
    def template_chars(self) -> str:
        """The verification template's characters: the stop token text ``<eos>`` in a template is the
        tokenizer's own special token, not characters."""
        return self.verify_template.replace(EOS_TOKEN, "")

    @property
    def verify_chars(self) -> str:
        """Characters the verification examples write (template and words), in first-use order."""
        return "".join(dict.fromkeys(self.template_chars + "".join(self.verify_words))) if self.verify_batch else ""


# ----------------------------------------------------------------------------------------- batches


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def sft_batch(
    tokenizer: Any, problems: Sequence[Problem], modulus: int = 0, responses: Sequence[str] | None = None
) -> tuple[Any, Any, Any]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``loss_mask`` for teacher forcing.

    Sequence = prompt + response + EOS, the response being ``responses[b]`` or else the arith
    solution; ``loss_mask[b, t]`` marks the positions whose *next* token is a response token or EOS
    (the loss is on the response and EOS only, never on the prompt).
    """
    import torch

    prompts = _encode(tokenizer, [p.problem for p in problems])
    if responses is None:
        responses = [solution(p.problem, modulus) for p in problems]
    targets = _encode(tokenizer, list(responses))
    eos = tokenizer.eos_token_id
    seqs = [torch.tensor(p + t + [eos]) for p, t in zip(prompts, targets)]
    input_ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=tokenizer.pad_token_id)
    lengths = torch.tensor([len(s) for s in seqs])
    prompt_len = torch.tensor([len(p) for p in prompts])
    pos = torch.arange(input_ids.shape[1]).unsqueeze(0)
    attention_mask = (pos < lengths.unsqueeze(1)).long()
    # position t predicts token t+1; train on predictions of tokens prompt_len .. length-1
    loss_mask = (pos >= prompt_len.unsqueeze(1) - 1) & (pos < lengths.unsqueeze(1) - 1)
    return input_ids, attention_mask, loss_mask


def sft_loss(model: Any, input_ids: Any, attention_mask: Any, loss_mask: Any) -> Any:
    """Token-mean cross-entropy of the masked next-token predictions (float32 log-softmax)."""
    import torch.nn.functional as F

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    mask = loss_mask[:, :-1]
    return F.cross_entropy(logits[mask], targets[mask])


def verification_batch(
    tokenizer: Any, problems: Sequence[Problem], responses: Sequence[str], labels: Sequence[bool], template: str,
    words: tuple[str, str],
) -> tuple[Any, Any, Any]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``loss_mask`` for verification examples.

    Sequence = prompt + response + template + verdict (``words[0]`` if ``labels[b]`` else ``words[1]``), no
    EOS: exactly what the two-template baseline (``laser eval --self-verify TEMPLATE``) reads, the
    verdict being the next token after the template. ``loss_mask`` marks only the position whose next
    token is the verdict, so the model learns to judge, never to write the template after a response.
    """
    import torch

    yes, no = (_encode(tokenizer, [w])[0] for w in words)
    heads = _encode(tokenizer, [p.problem + r + template for p, r in zip(problems, responses)])
    seqs = [torch.tensor(h + (yes if ok else no)) for h, ok in zip(heads, labels)]
    input_ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=tokenizer.pad_token_id)
    lengths = torch.tensor([len(s) for s in seqs])  # [B]
    pos = torch.arange(input_ids.shape[1]).unsqueeze(0)  # [1, L]
    attention_mask = (pos < lengths.unsqueeze(1)).long()
    loss_mask = pos == (lengths - 2).unsqueeze(1)  # [B, L]: the template's last token predicts the verdict
    return input_ids, attention_mask, loss_mask


def verify_examples(task: Any, seed: int, first: int, count: int) -> tuple[list[Problem], list[str], list[bool]]:
    """``count`` verification examples from training-stream positions ``VERIFY_OFFSET + first ...``: the
    task's SFT responses (right or honestly wrong, as ``sft_target`` writes them) labelled by its verifier.
    A fixed function of (seed, position), like the SFT data."""
    verifier = task.verifier()
    problems = [task.train_problem(seed, VERIFY_OFFSET + first + i) for i in range(count)]
    responses = [task.sft_target(p, random.Random(f"verify:{seed}:{first + i}")) for i, p in enumerate(problems)]
    labels = [verifier.reward(r, p.answer) > 0.5 for r, p in zip(responses, problems)]
    return problems, responses, labels


# ----------------------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    accuracy: float
    lp_z: Any  # float32 tensor [N] of log π(z | x, y, EOS) for finished responses (empty if no z)
    finished: float  # fraction of responses that ended with EOS


def measure(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    *,
    max_new_tokens: int,
    z_id: int | None = None,
    generator: Any = None,
    batch_size: int = 512,
    verifier: Any = None,
) -> Measurement:
    """Sample one response per problem at temperature 1, verify it (default: the arith verifier), and
    read lp_z (if ``z_id``)."""
    import torch

    from laser_rl.rollout.engine import SamplerEngine
    from laser_rl.rollout.pipeline import rollout_verify_score
    from laser_rl.rollout.sampler import SamplingConfig

    if verifier is None:
        verifier = ArithConfig().verifier()
    eos = tokenizer.eos_token_id
    suppress = tuple(i for i in {tokenizer.pad_token_id, z_id} if i is not None and i != eos)
    engine = SamplerEngine(model, tokenizer.pad_token_id, [eos], z_id, suppress)
    config = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            rb = rollout_verify_score(
                engine, tokenizer, _encode(tokenizer, [p.problem for p in problems]), [p.answer for p in problems],
                verifier, sampling=config, batch_size=batch_size, generator=generator,
            )
    finally:
        model.train(was_training)
    lp = rb.rollout.lp_z[rb.finished].float() if z_id is not None else torch.empty(0)
    n = max(len(problems), 1)
    return Measurement(accuracy=float(rb.rewards.sum()) / n, lp_z=lp, finished=float(rb.finished.sum()) / n)


def _beta_v_for(c_ref: float, target_logprob: float, warn: Callable[[str], None]) -> tuple[float, bool]:
    """β_v = auto for c_ref (score_params.resolve_beta_v); a fallback of 1.0 when c_ref is not well below the target."""
    from laser_rl.score_params import resolve_beta_v

    if c_ref < target_logprob - 0.5:
        return resolve_beta_v("auto", c_ref, target_logprob), False
    warn(
        f"warning: c_ref = {c_ref:.2f} is not below the target log-prob {target_logprob} (the model is barely "
        "trained), so no β_v keeps z improbable; saving the fallback β_v = 1.0"
    )
    return 1.0, True


# ----------------------------------------------------------------------------------------- training


def train_base_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    task: Any = None,
    max_steps: int = 1500,
    target_accuracy: float = 0.35,
    lr: float = 2e-3,
    batch_size: int = 128,
    eval_every: int = 50,
    eval_problems: int = 256,
    final_problems: int = 512,
    target_logprob: float = DEFAULT_TARGET_LOGPROB,
    verify_batch: int = 0,
    verify_template: str = "",
    verify_words: tuple[str, str] = ("1", "0"),
    model_kwargs: dict[str, Any] | None = None,
    overwrite: bool = False,
    num_threads: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the tiny base model by SFT until it reaches ``target_accuracy`` and save it to ``out_dir``.

    Returns ``accuracy`` (fresh problems, T = 1), ``c_ref``, ``c_ref_std``, ``beta_v``, ``steps``,
    ``seconds``, ``reached_target``, ``stop_accuracy`` (the evaluation that stopped training),
    ``history`` (``[(step, accuracy, loss)]``) and ``out_dir``. ``out_dir`` is written atomically.
    ``num_threads`` sets torch's CPU threads for the run (restored afterwards); ``None`` keeps them.
    ``task``: an embedded task config (``ArithConfig``, the default, or ``PairSumConfig``); its
    ``sft_target`` gives the SFT responses and its ``alphabet`` the tokenizer's characters.
    ``verify_batch`` > 0 adds that many verification examples to every step (:func:`verification_batch`:
    x + y + ``verify_template`` → ``verify_words[0]`` if y is right else ``verify_words[1]``), so the base
    has a trained second-pass verifier (``laser eval --self-verify``); their characters join the
    tokenizer's alphabet when the task's lacks them. 0 (the default) is plain SFT, unchanged.
    """
    import torch

    def say(msg: str) -> None:
        if log is not None:
            log(msg)
        else:
            print(msg, file=sys.stderr)

    cfg = SFTConfig(
        seed=seed,
        max_steps=max_steps,
        target_accuracy=target_accuracy,
        lr=lr,
        batch_size=batch_size,
        eval_every=eval_every,
        eval_problems=eval_problems,
        final_problems=final_problems,
        target_logprob=target_logprob,
        verify_batch=verify_batch,
        verify_template=verify_template,
        verify_words=tuple(verify_words),  # type: ignore[arg-type]
    )
    cfg.validate()
    task = task or ArithConfig()
    task.validate()
    out = check_output_dir(out_dir, overwrite)
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise LaserError(f"--threads: must be a positive integer, got {num_threads!r}")

    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _train(out, task, cfg, model_kwargs, progress, say)
    finally:
        torch.set_num_threads(threads_before)


@dataclass
class _SFTRun:
    """What the supervised loop leaves behind."""

    steps: int
    reached: bool  # the stopping evaluation reached target_accuracy
    stop_accuracy: float | None  # the last evaluation's accuracy
    history: list[tuple[int, float, float]]  # (step, accuracy, running loss) per evaluation


def _sft_loop(model: Any, tokenizer: Any, task: Any, cfg: SFTConfig, max_new_tokens: int, generator: Any,
              progress: bool) -> _SFTRun:
    """Teacher-force the task's SFT responses until an evaluation reaches ``target_accuracy`` (or the cap)."""
    import torch
    from tqdm.auto import tqdm

    seed, verifier = cfg.seed, task.verifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    eval_set = [task.train_problem(seed, EVAL_OFFSET + i) for i in range(cfg.eval_problems)]
    run = _SFTRun(steps=0, reached=False, stop_accuracy=None, history=[])
    running_loss = float("nan")
    bar = tqdm(total=cfg.max_steps, desc="laser base", disable=not progress, dynamic_ncols=True, leave=False)
    try:
        while run.steps < cfg.max_steps:
            first = run.steps * cfg.batch_size
            problems = [task.train_problem(seed, first + i) for i in range(cfg.batch_size)]
            # one RNG per stream position: the SFT data is a fixed function of (seed, position)
            responses = [task.sft_target(p, random.Random(f"sft:{seed}:{first + i}")) for i, p in enumerate(problems)]
            loss = sft_loss(model, *sft_batch(tokenizer, problems, responses=responses))
            if cfg.verify_batch:
                examples = verify_examples(task, seed, run.steps * cfg.verify_batch, cfg.verify_batch)
                batch = verification_batch(tokenizer, *examples, cfg.verify_template, cfg.verify_words)
                loss = loss + sft_loss(model, *batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            run.steps += 1
            value = float(loss.detach())
            running_loss = value if math.isnan(running_loss) else 0.9 * running_loss + 0.1 * value
            bar.update(1)
            if run.steps % cfg.eval_every == 0 or run.steps == cfg.max_steps:
                m = measure(model, tokenizer, eval_set, max_new_tokens=max_new_tokens, generator=generator,
                            verifier=verifier)
                run.history.append((run.steps, m.accuracy, running_loss))
                run.stop_accuracy = m.accuracy
                bar.set_postfix(loss=f"{running_loss:.3f}", acc=f"{m.accuracy:.3f}")
                if m.accuracy >= cfg.target_accuracy:
                    run.reached = True
                    break
            elif run.steps % 10 == 0:
                bar.set_postfix(loss=f"{running_loss:.3f}", acc=f"{run.stop_accuracy:.3f}" if run.history else "-")
    finally:
        bar.close()
    return run


def _measure_c_ref(
    model: Any, tokenizer: Any, task: Any, final_set: Sequence[Problem], final: Measurement, z_id: int,
    say: Callable[[str], None],
) -> tuple[float, float, int]:
    """(c_ref, std, count) from the final measurement's lp_z; when almost nothing finished, from the
    task's reference responses scored teacher-forced."""
    if final.lp_z.numel() >= 2:
        return float(final.lp_z.mean()), float(final.lp_z.std()), int(final.lp_z.numel())
    from laser_rl.rollout.scorer import score_responses

    say("warning: too few sampled responses finished; measuring c_ref on the reference solutions")
    lp = score_responses(
        model,
        _encode(tokenizer, [p.problem for p in final_set]),
        _encode(tokenizer, [task.sft_target(p) for p in final_set]),
        z_id=z_id,
        pad_id=tokenizer.pad_token_id,
        stop_ids=[tokenizer.eos_token_id],
        eos_id=tokenizer.eos_token_id,
    ).float()
    return float(lp.mean()), float(lp.std()), int(lp.numel())


def _save_base_model(out: Path, model: Any, tokenizer: Any, task: Any, params: Any) -> None:
    """An ordinary save_pretrained folder plus task.json and laser.json, written atomically."""
    from transformers.utils import logging as hf_logging

    from laser_rl.io import atomic_path
    from laser_rl.tasks.embedded import save_task

    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar for a 1 MB file
    try:
        with atomic_path(out) as tmp:
            tmp.mkdir()
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            save_task(tmp, task)
            params.save(tmp)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _train(
    out: Path,
    task: Any,
    cfg: SFTConfig,
    model_kwargs: dict[str, Any] | None,
    progress: bool,
    say: Callable[[str], None],
) -> dict[str, Any]:
    import torch

    from laser_rl.evaluation.self_verify import SelfVerifySpec
    from laser_rl.score_params import ScoreParams
    from laser_rl.tasks.char_tokenizer import Z_TOKEN, build_char_tokenizer, z_token_id
    from laser_rl.tasks.tiny_model import build_tiny_model

    seed = cfg.seed
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    extra_chars = "".join(c for c in cfg.verify_chars if c not in task.alphabet)  # "" without verification
    tokenizer = build_char_tokenizer(task.alphabet + extra_chars)
    z_id = z_token_id(tokenizer, Z_TOKEN)
    max_new_tokens = max(64, task.max_response_tokens())
    max_position = max(256, 2 * (task.max_prompt_tokens() + max_new_tokens + 1))
    model = build_tiny_model(tokenizer, seed=seed, **{"max_position": max_position, **(model_kwargs or {})})
    model.train()
    generator = torch.Generator().manual_seed(seed + 1)
    run = _sft_loop(model, tokenizer, task, cfg, max_new_tokens, generator, progress)
    train_seconds = time.perf_counter() - t0
    if not run.reached:
        say(
            f"warning: stopped at the step cap ({cfg.max_steps}) before reaching accuracy "
            f"{cfg.target_accuracy} (last evaluation: {run.stop_accuracy:.3f})"
        )

    # Reported accuracy and c_ref: fresh problems, one T = 1 sample each, lp_z read in the sampling loop.
    final_set = [task.train_problem(seed, FINAL_OFFSET + i) for i in range(cfg.final_problems)]
    final = measure(model, tokenizer, final_set, max_new_tokens=max_new_tokens, z_id=z_id, generator=generator,
                    verifier=task.verifier())
    c_ref, c_ref_std, c_ref_n = _measure_c_ref(model, tokenizer, task, final_set, final, z_id, say)
    beta_v, fallback = _beta_v_for(c_ref, cfg.target_logprob, say)
    lo, hi = TARGET_BAND
    if not lo <= final.accuracy <= hi:
        say(f"warning: base accuracy {final.accuracy:.3f} is outside the band [{lo}, {hi}] where RL has room")
    params = ScoreParams(
        token=Z_TOKEN, token_id=z_id, beta_v=beta_v, c_ref=c_ref, c_ref_std=c_ref_std,
        extra={
            "base_accuracy": final.accuracy, "base_accuracy_problems": len(final_set), "base_finished": final.finished,
            "stop_ids": [tokenizer.eos_token_id], "max_new_tokens": max_new_tokens, "c_ref_samples": c_ref_n,
            "target_logprob": cfg.target_logprob, "beta_v_fallback": fallback, "sft_steps": run.steps,
            "sft_reached_target": run.reached, "sft_stop_accuracy": run.stop_accuracy, "sft_seed": seed,
            **({**SelfVerifySpec(cfg.verify_template, cfg.verify_words).as_extra(), "verify_batch": cfg.verify_batch}
               if cfg.verify_batch else {}),
        },
    )
    _save_base_model(out, model, tokenizer, task, params)
    return {
        "accuracy": final.accuracy,
        "c_ref": c_ref,
        "c_ref_std": c_ref_std,
        "beta_v": beta_v,
        "steps": run.steps,
        "seconds": time.perf_counter() - t0,
        "train_seconds": train_seconds,
        "reached_target": run.reached,
        "stop_accuracy": run.stop_accuracy,
        "history": run.history,
        "out_dir": str(out),
    }
