"""`laser demo`: the paper's experiment on an embedded task — base model, GRPO, LaSeR, evaluation.

    base   = `laser base` with configs/demo/base-SETUP.yaml (SFT; c_ref measured; β_v derived from it)
    grpo   = configs/demo/grpo-SETUP.yaml  from base, seed S
    laser  = configs/demo/laser-SETUP.yaml from base, seed S (same prompts, same budget, same c_ref/β_v)
    eval   = each model on the held-out split, N problems × 8 samples, scored in the sampling loop

SETUP is ``pairsum-verify`` by default (issue 18's search task, where checking is easier than solving, so
the score has something to find that likelihood cannot; the responses write no verdict, and the base
learned a verification template in SFT, which the evaluation's second pass reads: issue 24),
``pairsum`` (the same task with a written check word in every response), ``pairsum-nocheck`` (no
verdict, no template), ``arith`` (the first demo: chain arithmetic) or ``clock`` (rounds 2-3 of
docs/research/self-verification.md). The configs ship inside the package.
Every phase is resumable: rerunning with the same ``--out`` reuses what is finished.

Speed (issue 25): the base model of a setup ships inside the package (configs/demo/bases/SETUP: the
output of ``laser base --config demo/base-SETUP.yaml --seed S --threads 1``, byte for byte; see
``scripts/check_shipped_base.py``), so the demo copies it instead of training it unless asked to
(``rebuild_base``). With ``jobs`` > 1 the two RL arms and the three evaluations run as separate
one-thread processes, up to ``jobs`` at a time, each task as soon as what it needs is done; every
task is seeded on its own, so its results are those of the sequential run (``jobs`` = 1, in-process).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from laser_rl.core import SCORE_THRESHOLD, correct_target_logprob
from laser_rl.errors import LaserError
from laser_rl.io import SHIPPED_CONFIGS, read_jsonl, write_json_atomic, write_text_atomic
from laser_rl.jobs import Task, default_jobs, run_tasks
from laser_rl.score_params import ScoreParams

if TYPE_CHECKING:
    from laser_rl.evaluation.self_verify import SelfVerifySpec

CONFIG_DIR = SHIPPED_CONFIGS / "demo"
#: Shipped base models, one folder per setup (configs/demo/bases/SETUP), each with its BUILD_FILE.
BASES_DIR = CONFIG_DIR / "bases"
#: What a base folder was built from (config, seed, threads, the settings read from the config).
BUILD_FILE = "build.json"
DEFAULT_SETUP = "pairsum-verify"
MODELS = ("base", "grpo", "laser")
#: The free signals the score is compared with (summary key prefix -> label).
FREE_SIGNALS = {"mean_logprob": "mean token log-prob", "min_logprob": "min token log-prob",
                "verdict": "written verdict"}
SUMMARY_KEYS = ("accuracy", "pass@8", "maj@8", "weighted_maj@8", "best_of@8", "hm_tpr_tnr", "auroc")


def _say(msg: str) -> None:
    print(f"[laser demo] {msg}", file=sys.stderr, flush=True)


def demo_setups() -> list[str]:
    """The setups ``laser demo --setup`` accepts: every configs/demo/base-SETUP.yaml shipped."""
    return sorted(p.name[len("base-"):-len(".yaml")] for p in CONFIG_DIR.glob("base-*.yaml"))


def demo_config_path(name: str, setup: str = DEFAULT_SETUP) -> Path:
    """configs/demo/NAME-SETUP.yaml (NAME: base, grpo or laser), from the installed package."""
    path = CONFIG_DIR / f"{name}-{setup}.yaml"
    if not path.is_file():
        raise LaserError(f"--setup {setup}: no demo config {path.name} (setups: {', '.join(demo_setups())})")
    return path


#: Keys of configs/demo/base*.yaml: ``task`` (embedded task fields, ``name`` arith or pairsum), ``model`` (tiny-model shape) and
#: these keyword arguments of ``train_base_model``.
BASE_SFT_KEYS = ("max_steps", "target_accuracy", "lr", "batch_size", "eval_every", "eval_problems",
                 "final_problems", "target_logprob", "verify_batch", "verify_template", "verify_words")
BASE_MODEL_KEYS = ("hidden", "layers", "heads", "intermediate")


def load_base_settings(path: str | Path) -> dict[str, Any]:
    """``train_base_model`` keyword arguments from a demo base YAML (``LaserError`` naming file and key)."""
    import yaml

    from laser_rl.tasks.embedded import task_config_from_dict

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise LaserError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise LaserError(f"{path}: expected a mapping at the top level")
    settings: dict[str, Any] = {}
    for key, value in data.items():
        if key == "task":
            if not isinstance(value, dict):
                raise LaserError(f"{path}: task: expected a mapping of task fields (name: arith or pairsum)")
            settings["task"] = task_config_from_dict(value, where=f"{path}: task")
        elif key == "model":
            if not isinstance(value, dict):
                raise LaserError(f"{path}: model: expected a mapping")
            unknown = sorted(set(value) - set(BASE_MODEL_KEYS))
            if unknown:
                raise LaserError(f"{path}: model: unknown key(s) {', '.join(unknown)} (known: {', '.join(BASE_MODEL_KEYS)})")
            bad = [k for k, v in value.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1]
            if bad:
                raise LaserError(f"{path}: model.{bad[0]}: must be a positive integer, got {value[bad[0]]!r}")
            settings["model_kwargs"] = dict(value)
        elif key in BASE_SFT_KEYS:
            settings[key] = value
        else:
            known = ", ".join(("task", "model", *BASE_SFT_KEYS))
            raise LaserError(f"{path}: unknown key {key!r} (known: {known})")
    return settings


def base_build_record(setup: str, seed: int, settings: dict[str, Any], threads: int | None = 1) -> dict[str, Any]:
    """The BUILD_FILE of a demo base: what it was built from, and the command that rebuilds it.

    ``settings`` are :func:`load_base_settings`'s (the task as its fields), so a shipped base can be
    checked against today's config: when the config changes, the record stops matching.
    """
    fields = {k: (v.to_dict() if k == "task" else v) for k, v in settings.items()}
    thread_flag = f" --threads {threads}" if threads else ""
    return {
        "config": f"demo/base-{setup}.yaml", "seed": seed, "threads": threads,
        "command": f"laser base --config demo/base-{setup}.yaml --seed {seed}{thread_flag} --out DIR",
        "settings": json.loads(json.dumps(fields, sort_keys=True)),  # tuples as lists, as read back
    }


def shipped_base_dir(setup: str) -> Path:
    """configs/demo/bases/SETUP: where the setup's base model ships (it may not ship for every setup)."""
    return BASES_DIR / setup


def shipped_base(setup: str, seed: int, settings: dict[str, Any]) -> tuple[Path | None, str]:
    """(the shipped base folder for this setup and seed, "") or (None, why none fits)."""
    folder = shipped_base_dir(setup)
    if not (folder / BUILD_FILE).is_file():
        return None, f"no base model ships for --setup {setup}"
    record = json.loads((folder / BUILD_FILE).read_text(encoding="utf-8"))
    if record.get("seed") != seed:
        return None, f"the shipped base was built with seed {record.get('seed')}, not --seed {seed}"
    if record.get("settings") != base_build_record(setup, seed, settings)["settings"]:
        return None, (f"configs/demo/base-{setup}.yaml differs from what the shipped base was built from "
                      "(scripts/check_shipped_base.py --update rebuilds it)")
    return folder, ""


def _provide_base(base_dir: Path, setup: str, seed: int, settings: dict[str, Any], rebuild: bool,
                  threads: int | None) -> str:
    """Put the base model into ``base_dir``: reuse it, copy the shipped one, or train it. Returns how."""
    from laser_rl.io import atomic_path
    from laser_rl.training.sft import train_base_model

    if ScoreParams.load(base_dir) is not None:
        _check_base_task(base_dir, settings, setup)
        build = base_dir / BUILD_FILE
        source = json.loads(build.read_text(encoding="utf-8")).get("source") if build.is_file() else None
        if rebuild and source == "shipped":
            raise LaserError(f"--rebuild-base: {base_dir} already holds the shipped base model; use another --out")
        _say(f"base: reusing {base_dir}")
        return f"reused ({source or 'unknown origin'})"
    record = base_build_record(setup, seed, settings, threads)
    shipped, why_not = (None, "--rebuild-base") if rebuild else shipped_base(setup, seed, settings)
    if shipped is not None:
        _say(f"base: copying the shipped base model ({record['command']}) into {base_dir}")
        with atomic_path(base_dir) as tmp:
            shutil.copytree(shipped, tmp)
            write_json_atomic(tmp / BUILD_FILE, {**record, "source": "shipped"})
        return "shipped"
    _say(f"base: training the embedded {settings['task'].name} base model into {base_dir} (setup {setup}; {why_not})")
    train_base_model(base_dir, seed=seed, overwrite=True, **settings)
    write_json_atomic(base_dir / BUILD_FILE, {**record, "source": "rebuilt"})
    return "rebuilt"


def _finished_train_seconds(run_dir: Path) -> float | None:
    """The training time of a finished RL run in ``run_dir``; None when it has not finished."""
    done_file = run_dir / "train_seconds.json"
    if done_file.is_file() and (run_dir / "final" / "laser.json").is_file():
        return float(json.loads(done_file.read_text())["train_seconds"])
    return None


def _train(name: str, out: Path, base_dir: Path, params: ScoreParams, seed: int, setup: str, overrides: list[str]) -> float:
    """Train (or resume) one RL run; returns its training wall time in seconds."""
    from laser_rl.training.config import load_config
    from laser_rl.training.trainer import train

    run_dir = out / name
    cfg = load_config(demo_config_path(name, setup), [
        f"model.path={base_dir}", f"output_dir={run_dir}", f"train.seed={seed}",
        f"laser.c_ref={params.c_ref}", f"laser.beta_v={params.beta_v}", f"laser.token={params.token}", *overrides,
    ])
    resume = (run_dir / "metrics.jsonl").exists()
    _say(f"{name}: training {cfg.train.steps} steps ({cfg.data.prompts_per_step} prompts × {cfg.rollout.n} samples)"
         + (" — resuming" if resume else ""))
    result = train(cfg, resume=resume)
    write_json_atomic(run_dir / "train_seconds.json", {"train_seconds": result.seconds})
    return result.seconds


def _evaluate(name: str, model_dir: Path, out: Path, seed: int, problems: int, n: int, data: str,
              spec: SelfVerifySpec | None = None) -> dict[str, Any]:
    """Evaluate (or reuse) one model on the held-out split; returns its metrics (samples stay in eval/NAME).
    With ``spec``, the same model also verifies its samples in a second pass (the two-template baseline)."""
    from laser_rl.evaluation.runner import EvalOptions, load_eval_data, run_eval
    from laser_rl.evaluation.scoring_model import load_scoring_model
    from laser_rl.evaluation.self_verify import refresh_eval_baselines

    eval_dir = out / "eval" / name
    _say(f"{name}: evaluating on {problems} held-out {data} problems × {n} samples")
    run_eval(EvalOptions(model=str(model_dir), data=data, n=n, out=str(eval_dir), limit=problems, batch_size=512,
                         seed=seed), log=_say)
    # the verdict the responses write (pair-sum's ;ok;/;no;): a free baseline next to the likelihood ones;
    # and, when the base learned a verification template, the second pass that reads it (its cost reported)
    return refresh_eval_baselines(eval_dir, load_eval_data(data, model_dir), limit=problems, log=_say,
                                  self_verify_spec=spec, batch_size=512,
                                  load_model=lambda: load_scoring_model(str(model_dir)))


def summarise(metrics: dict[str, Any], train_seconds: float) -> dict[str, Any]:
    """The summary.json entry of one model: headline numbers plus the free baselines (log-probs, and the
    written verdict when the responses write one): ``NAME_auroc``, ``NAME_within_problem_auroc``,
    ``NAME_weighted_maj@8``, ``NAME_best_of@8`` and, for the verdict, ``NAME_hm_tpr_tnr``."""
    v, voting = metrics["verification"], metrics["voting"]
    entry: dict[str, Any] = {
        "accuracy": metrics["accuracy"], "pass@8": voting["pass@8"], "maj@8": voting["maj@8"],
        "weighted_maj@8": voting["weighted_maj@8"], "best_of@8": voting["best_of@8"],
        "hm_tpr_tnr": v["hm_tpr_tnr"], "auroc": v["auroc"], "within_problem_auroc": v["within_problem_auroc"],
        "tpr": v["tpr"], "tnr": v["tnr"], "ece": v["ece"], "train_seconds": train_seconds,
    }
    for name, b in (metrics.get("baselines") or {}).items():
        for key in ("auroc", "within_problem_auroc", "hm_tpr_tnr", "weighted_maj@8", "best_of@8", "coverage"):
            if key in b:
                entry[f"{name}_{key}"] = b[key]
    cost = ((metrics.get("baselines") or {}).get("self_verify") or {}).get("cost")
    if cost:  # the second pass's tokens per verified response (None: nothing finished, so nothing verified);
        # LaSeR's score costs 1 (the step after EOS)
        prefill, decode = cost["prefill_tokens_per_response"], cost["decode_tokens_per_response"]
        entry["self_verify_tokens_per_response"] = None if prefill is None or decode is None else prefill + decode
        entry["self_verify_seconds_per_response"] = cost["seconds_per_response"]
    return entry


def plot_training_curves(runs: dict[str, list[dict[str, Any]]], path: Path, window: int = 10) -> Path:
    """Batch accuracy and self-verification (hm of TPR/TNR, threshold 0.5) over RL steps, smoothed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, rows in runs.items():
        steps = np.array([r["step"] for r in rows])
        for ax, key in zip(axes, ("accuracy", "sv_hm")):
            y = np.array([r.get(key, np.nan) for r in rows], dtype=float)
            if np.isnan(y).all():
                continue
            kernel = np.ones(min(window, len(y))) / min(window, len(y))
            smooth = np.convolve(np.nan_to_num(y), kernel, mode="valid")
            ax.plot(steps[len(steps) - len(smooth):], smooth, label=name)
    axes[0].set_title("training batch accuracy (running mean)")
    axes[1].set_title("self-verification hm(TPR, TNR) on the batch")
    for ax in axes:
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a panel can be empty (e.g. hm undefined at every step)
            ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def render_summary_table(summary: dict[str, Any]) -> str:
    from laser_rl.evaluation.metrics import format_metric

    cols = ["accuracy", "pass@8", "maj@8", "weighted_maj@8", "best_of@8", "hm_tpr_tnr", "auroc", "within_problem_auroc",
            "ece", "train_seconds"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in MODELS:
        m = summary[name]
        cells = [format_metric(m[c], ".1f", 1 if c == "train_seconds" else 100) for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    base_lines = ["", "Free signals next to LaSeR's score (no training needed): the sampled-token log-probs and, "
                  "when the responses write one, their own verdict (`;ok;` / `;no;`); and, when the base learned a "
                  "verification template, the second pass that reads it (not free):", "",
                  "| model | score | AUROC | within-problem AUROC | hm(TPR, TNR) | weighted maj@8 | best-of-8 |",
                  "|---|---|---|---|---|---|---|"]
    for name in MODELS:
        m = summary[name]
        rows = [("LaSeR self-reward", "")] + [(label, f"{b}_") for b, label in FREE_SIGNALS.items() if has_signal(m, b)]
        if "self_verify_auroc" in m:  # not free: a second pass over x + y + template
            tokens = m.get("self_verify_tokens_per_response")
            cost = "" if tokens is None else f", {tokens:.1f} tokens per response"
            rows.append((f"second pass, learned template (not free{cost})", "self_verify_"))
        for label, prefix in rows:
            cells = [format_metric(m.get(f"{prefix}{c}"), ".1f", 100)
                     for c in ("auroc", "within_problem_auroc", "hm_tpr_tnr", "weighted_maj@8", "best_of@8")]
            base_lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines + base_lines)


def run_demo(out: str | Path, *, seed: int = 0, setup: str = DEFAULT_SETUP, eval_problems: int = 1000,
             eval_n: int = 8, threads: int | None = 1, base_overrides: dict[str, Any] | None = None,
             train_overrides: list[str] | None = None, jobs: int | None = None,
             rebuild_base: bool = False) -> dict[str, Any]:
    """Run the whole demo into ``out``; returns the summary (also written to ``out/summary.json``).

    ``threads`` sets torch's CPU threads for the run (restored afterwards; ``None`` keeps them), in
    this process and in each worker: the tiny models gain nothing from intra-op threads, and on a
    loaded 2-core machine two threads made the base SFT ~10x slower than one
    (docs/research/self-verification.md, round 4). ``jobs``: tasks at once (None: :func:`default_jobs`;
    1: everything in this process, one after the other). ``rebuild_base``: train the base model
    instead of copying the shipped one (``base_overrides`` also do, as they change the base).
    """
    import torch

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise LaserError(f"--threads: must be a positive integer, got {threads!r}")
    jobs = default_jobs() if jobs is None else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise LaserError(f"--jobs: must be a positive integer, got {jobs!r}")
    settings = load_base_settings(demo_config_path("base", setup))  # checks --setup before anything runs
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_demo(Path(out), seed, setup, settings, eval_problems, eval_n, base_overrides or {},
                         list(train_overrides or []), jobs, rebuild_base, threads)
    finally:
        torch.set_num_threads(threads_before)


def _check_base_task(base_dir: Path, settings: dict[str, Any], setup: str) -> None:
    """A reused base folder must hold the setup's task: its tokenizer is the task's alphabet."""
    from laser_rl.tasks.embedded import load_task_config

    task = load_task_config(base_dir)
    have, want = (task.name if task is not None else "arith"), settings["task"].name
    if have != want:
        raise LaserError(f"{base_dir} holds a base model for the {have} task, but --setup {setup} trains on {want}: "
                         f"use another --out (or --setup {have})")


def _run_demo(out: Path, seed: int, setup: str, settings: dict[str, Any], eval_problems: int, eval_n: int,
              base_overrides: dict[str, Any], train_overrides: list[str], jobs: int, rebuild_base: bool,
              threads: int | None) -> dict[str, Any]:
    from laser_rl.evaluation.report import plot_accuracy_vs_k, plot_reliability, plot_score_histograms
    from laser_rl.evaluation.self_verify import SelfVerifySpec

    t0, clock0 = time.perf_counter(), time.time()
    out.mkdir(parents=True, exist_ok=True)
    base_dir = out / "base"
    settings = {**settings, **base_overrides}

    # 1. base model: reused, copied from the package, or trained (`--rebuild-base`)
    base_source = _provide_base(base_dir, setup, seed, settings, rebuild_base, threads)
    params = ScoreParams.load(base_dir)
    assert params is not None
    _say(f"base: c_ref = {params.c_ref:.3f} ± {params.c_ref_std or 0:.3f}, beta_v = {params.beta_v:.4f}")
    clock_base = time.time()

    # 2. RL runs (same seed, prompts and budget), 3. evaluation on the held-out split of the base's task
    data = settings["task"].name
    dirs = {"base": base_dir, "grpo": out / "grpo" / "final", "laser": out / "laser" / "final"}
    # tqdm bars of two processes would overwrite each other: log lines instead (metrics.jsonl is unchanged)
    arm_overrides = train_overrides if jobs <= 1 else ["logging.progress=none", *train_overrides]
    train_seconds: dict[str, float] = {"base": 0.0}
    tasks = []
    for name in ("grpo", "laser"):
        finished = _finished_train_seconds(out / name)
        if finished is None:
            tasks.append(Task(f"train {name}", _train, (name, out, base_dir, params, seed, setup, arm_overrides)))
        else:
            _say(f"{name}: reusing the finished run in {out / name}")
            train_seconds[name] = finished
    scheduled = {t.name for t in tasks}
    spec = SelfVerifySpec.from_extra(params.extra)  # the template the base learned, if any: the second pass
    tasks += [Task(f"eval {name}", _evaluate, (name, dirs[name], out, seed, eval_problems, eval_n, data, spec),
                   tuple({f"train {name}"} & scheduled)) for name in MODELS]
    if jobs > 1:
        _say(f"running {len(tasks)} tasks, up to {jobs} at a time, each in a one-thread process")
    done = run_tasks(tasks, jobs, threads)
    train_seconds.update({name: done[f"train {name}"][0] for name in ("grpo", "laser") if f"train {name}" in done})
    metrics = {name: done[f"eval {name}"][0] for name in MODELS}
    records = {name: read_jsonl(out / "eval" / name / "samples.jsonl")[:eval_problems] for name in MODELS}

    # 4. summary, plots, report
    clock_report = time.time()
    summary: dict[str, Any] = {name: summarise(metrics[name], train_seconds[name]) for name in MODELS}
    summary["c_ref"] = params.c_ref
    plot_accuracy_vs_k(metrics, out / "accuracy_vs_k.png")
    plot_score_histograms(records, out / "score_histograms.png")
    plot_reliability(records, out / "reliability.png")
    curves = {name: read_jsonl(out / name / "metrics.jsonl") for name in ("grpo", "laser")}
    plot_training_curves(curves, out / "training_curves.png")
    summary["phase_seconds"] = phase_seconds(clock0, clock_base, done, time.time() - clock_report)
    summary["wall_seconds"] = time.perf_counter() - t0
    info = {"setup": setup, "beta_v": params.beta_v,
            "laser_vs_grpo_train_time": train_seconds["laser"] / max(train_seconds["grpo"], 1e-9),
            "eval": {"problems": eval_problems, "n": eval_n, "seed": seed, "data": data},
            "base": {"source": base_source, **{k: v for k, v in _read_build(base_dir).items() if k != "settings"}},
            "jobs": jobs, "threads": threads}
    write_json_atomic(out / "summary.json", summary)
    write_json_atomic(out / "run_info.json", info)
    write_text_atomic(out / "report.md", render_report(summary, info))
    _say(f"done in {summary['wall_seconds'] / 60:.1f} min; see {out / 'report.md'}")
    return summary


def _read_build(base_dir: Path) -> dict[str, Any]:
    path = base_dir / BUILD_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def phase_seconds(clock0: float, clock_base: float, done: dict[str, tuple[Any, float, float]],
                  report: float) -> dict[str, Any]:
    """Wall time per phase: ``base``, ``train`` and ``eval`` (first start to last end of the phase's tasks,
    so with ``--jobs`` > 1 they overlap), ``report``, and ``tasks``: each task's own time."""
    def span(prefix: str) -> float:
        times = [(a, b) for name, (_, a, b) in done.items() if name.startswith(prefix)]
        return max(b for _, b in times) - min(a for a, _ in times) if times else 0.0  # 0: all reused

    return {"base": clock_base - clock0, "train": span("train "), "eval": span("eval "), "report": report,
            "tasks": {name: b - a for name, (_, a, b) in done.items()}}


def render_report(summary: dict[str, Any], info: dict[str, Any]) -> str:
    e, beta_v = info["eval"], info["beta_v"]
    return f"""# laser demo: GRPO vs LaSeR on the embedded {e.get('data', 'arith')} task

Held-out split: {e['problems']} problems × {e['n']} samples (T = 1), seed {e['seed']}.
c_ref = {summary['c_ref']:.3f} (measured on the base model), β_v = {beta_v:.4f}
(so a correct response's target log π(z | x, y, EOS) is c_ref + 1/β_v = {correct_target_logprob(summary['c_ref'], beta_v):.2f}).
Total wall time {summary['wall_seconds'] / 60:.1f} min; LaSeR / GRPO training time = {info['laser_vs_grpo_train_time']:.3f}.
{render_timing(summary, info)}

All numbers in percent except train_seconds. `hm_tpr_tnr` is the paper's self-verification "F1":
the harmonic mean of the accuracy on correct (TPR) and incorrect (TNR) responses, threshold {SCORE_THRESHOLD:g}.

{render_summary_table(summary)}

![accuracy vs k](accuracy_vs_k.png)

![score histograms](score_histograms.png)

![reliability](reliability.png)

![training curves](training_curves.png)

## What this run shows

{chr(10).join(f"- {line}" for line in findings(summary))}

The score costs no extra forward pass in training and one decode step at test time. What it has to
beat is the best signal a user already has for free: the token log-probs, and the verdict a response
writes about itself when it writes one (the written-verdict rows above). On chain arithmetic
(`--setup arith`) a wrong answer comes from a low-probability sampling slip, so the token log-probs
already tell. On the pair-sum task a wrong pair is written fluently, so likelihood cannot tell; with
check text (`--setup pairsum`) every response states `;ok;` / `;no;`, and reading that word needs no
training, so the conclusions above compare the score with it on the GRPO model too. The paper's claim
is about responses that write no verdict (`--setup pairsum-verify`), where the alternative is a second
verification pass over x + y + a template (the "two-template" baseline, `laser eval --self-verify
TEMPLATE`): when the base model learned such a template in SFT, each evaluation runs that pass too and
the tables show it with its cost in tokens per response, against the score's one decode step.
"""


def render_timing(summary: dict[str, Any], info: dict[str, Any]) -> str:
    """The report's lines on where the time went and which base model the run started from."""
    lines = []
    phases = summary.get("phase_seconds")
    if phases:
        tasks = ", ".join(f"{name} {sec:.0f} s" for name, sec in phases["tasks"].items())
        lines.append(f"Wall time per phase ({info.get('jobs', 1)} job(s), {info.get('threads') or 'default'} "
                     f"thread(s) each): base {phases['base']:.0f} s, RL training {phases['train']:.0f} s, "
                     f"evaluation {phases['eval']:.0f} s, report {phases['report']:.0f} s "
                     f"(training and evaluation overlap when jobs > 1; per task: {tasks}).")
    base = info.get("base")
    if base:
        how = {"shipped": f"copied from the package (configs/demo/bases/{info['setup']})",
               "rebuilt": "trained from scratch (`--rebuild-base`)"}.get(base["source"], base["source"])
        cmd = f", the output of `{base['command']}`" if base.get("command") else ""
        lines.append(f"Base model: {how}{cmd}; `laser demo --rebuild-base` trains it anew.")
    return "\n".join(lines)


def has_signal(entry: dict[str, Any], name: str) -> bool:
    """Whether a free signal was measured on this model and exists on some response: a written verdict with
    coverage 0 (the responses write none, as in --setup pairsum-verify) is no signal, not a 0.5 score."""
    if not any(key.startswith(f"{name}_") for key in entry):
        return False
    coverage = entry.get(f"{name}_coverage")  # only the verdict has one
    return coverage is None or coverage > 0


def best_free_signal(entry: dict[str, Any], metric: str) -> tuple[str, float] | None:
    """(name, value) of the free signal (:data:`FREE_SIGNALS`) that does best on ``metric`` for one model."""
    values = {b: entry.get(f"{b}_{metric}") for b in FREE_SIGNALS if has_signal(entry, b)}
    defined = {b: float(v) for b, v in values.items() if v is not None}
    if not defined:
        return None
    best = max(defined, key=lambda b: defined[b])
    return best, defined[best]


def best_free_vote(entry: dict[str, Any]) -> tuple[str, float]:
    """(label, accuracy) of the best vote without LaSeR's score: maj@8 or a free signal's weighted maj@8."""
    votes = {"maj@8": float(entry["maj@8"])}
    for b, label in FREE_SIGNALS.items():
        if has_signal(entry, b) and entry.get(f"{b}_weighted_maj@8") is not None:
            votes[f"{label}-weighted maj@8"] = float(entry[f"{b}_weighted_maj@8"])
    best = max(votes, key=lambda k: votes[k])  # the first on ties: maj@8 before any weighting
    return best, votes[best]


def findings(summary: dict[str, Any]) -> list[str]:
    """The report's conclusions, each computed from the summary (nothing asserted that was not measured)."""
    from laser_rl.evaluation.metrics import format_metric

    def pct(x: float | None) -> str:
        return format_metric(x, ".1f", 100)

    def gain(a: float | None, b: float | None) -> str:
        return "n/a" if a is None or b is None else f"{100 * (a - b):+.1f}"

    base, grpo, laser = summary["base"], summary["grpo"], summary["laser"]
    lines = [
        f"Accuracy: base {pct(base['accuracy'])}, GRPO {pct(grpo['accuracy'])}, LaSeR {pct(laser['accuracy'])} "
        f"(LaSeR − GRPO {gain(laser['accuracy'], grpo['accuracy'])} points).",
        f"Self-verification AUROC of log π(z | x, y, EOS): LaSeR {pct(laser['auroc'])}, GRPO {pct(grpo['auroc'])} "
        f"(nothing trained GRPO's, so 50 is chance); hm(TPR, TNR) {pct(laser['hm_tpr_tnr'])} vs {pct(grpo['hm_tpr_tnr'])}.",
        f"Voting with the LaSeR model's own scores: weighted maj@8 {pct(laser['weighted_maj@8'])} vs maj@8 "
        f"{pct(laser['maj@8'])} ({gain(laser['weighted_maj@8'], laser['maj@8'])}); best-of-8 {pct(laser['best_of@8'])} "
        f"vs a random sample {pct(laser['accuracy'])} ({gain(laser['best_of@8'], laser['accuracy'])}).",
    ]
    if has_signal(laser, "verdict") or has_signal(grpo, "verdict"):
        lines.append(f"The written verdict (each response's own check word, free and untrained) reaches AUROC {pct(grpo.get('verdict_auroc'))} "
                     f"on the GRPO model and {pct(laser.get('verdict_auroc'))} on the LaSeR model, hm(TPR, TNR) "
                     f"{pct(grpo.get('verdict_hm_tpr_tnr'))} / {pct(laser.get('verdict_hm_tpr_tnr'))}; "
                     f"LaSeR's score: AUROC {pct(laser['auroc'])}, hm {pct(laser['hm_tpr_tnr'])}.")
    ours = laser.get("within_problem_auroc")
    free = {name: best_free_signal(summary[name], "within_problem_auroc") for name in ("grpo", "laser")}
    if ours is not None and all(free.values()):
        (g_name, g_val), (l_name, l_val) = free["grpo"], free["laser"]  # type: ignore[misc]
        verdict = "beats" if ours > max(g_val, l_val) else "does not beat"
        lines.append(f"Ranking a problem's own samples (within-problem AUROC), the LaSeR score ({pct(ours)}) {verdict} "
                     f"the best free signal: {FREE_SIGNALS[l_name]} on the LaSeR model ({pct(l_val)}), "
                     f"{FREE_SIGNALS[g_name]} on the GRPO model ({pct(g_val)}).")
    lines += two_template_findings(summary)
    votes = {name: best_free_vote(summary[name]) for name in ("grpo", "laser")}
    (g_label, g_vote), (l_label, l_vote) = votes["grpo"], votes["laser"]
    ours_vote = laser["weighted_maj@8"]
    verdict = "beats" if ours_vote > max(g_vote, l_vote) else "does not beat"
    lines.append(f"Voting: LaSeR's score-weighted maj@8 ({pct(ours_vote)}) {verdict} the best free vote, "
                 f"{g_label} on the GRPO model ({pct(g_vote)}, {gain(ours_vote, g_vote)}) and {l_label} on the LaSeR "
                 f"model ({pct(l_vote)}).")
    return lines


def two_template_findings(summary: dict[str, Any]) -> list[str]:
    """The score against the two-template baseline (a second pass with the template the base learned), in
    quality and in verification tokens per response; no line when the base learned no template."""
    from laser_rl.evaluation.metrics import format_metric

    grpo, laser = summary["grpo"], summary["laser"]
    if "self_verify_auroc" not in grpo and "self_verify_auroc" not in laser:
        return []
    passes = [(m["self_verify_auroc"], name) for name, m in (("GRPO", grpo), ("LaSeR", laser))
              if m.get("self_verify_auroc") is not None]
    best = max(passes) if passes else (None, "n/a")
    tokens = [m["self_verify_tokens_per_response"] for m in (grpo, laser) if m.get("self_verify_tokens_per_response")]
    gap = None if laser.get("auroc") is None or best[0] is None else laser["auroc"] - best[0]
    cost = f"{sum(tokens) / len(tokens):.1f} tokens per verified response against the score's 1" if tokens else ""
    return [f"Against a second verification pass (the two-template baseline: the same model reads x + y + the "
            f"template it learned in SFT): its AUROC is {format_metric(grpo.get('self_verify_auroc'), '.1f', 100)} on "
            f"the GRPO model and {format_metric(laser.get('self_verify_auroc'), '.1f', 100)} on the LaSeR model; "
            f"LaSeR's score {format_metric(laser.get('auroc'), '.1f', 100)} "
            f"({'n/a' if gap is None else f'{100 * gap:+.1f}'} vs the better pass, on the {best[1]} model), "
            f"weighted maj@8 {format_metric(laser['weighted_maj@8'], '.1f', 100)} vs the pass's "
            f"{format_metric(grpo.get('self_verify_weighted_maj@8'), '.1f', 100)} / "
            f"{format_metric(laser.get('self_verify_weighted_maj@8'), '.1f', 100)}. The pass costs {cost}."]
