"""The evaluation report: a markdown summary and PNG plots (matplotlib, Agg, no global pyplot state).

Every plot function takes *named* inputs (``{"base": ..., "LaSeR": ...}``) so ``laser demo`` can
overlay several models with the same code that ``laser eval`` uses for one:

- :func:`plot_accuracy_vs_k` (metrics dicts): maj / weighted maj / best-of / pass accuracy vs k;
- :func:`plot_score_histograms` (record lists): self-reward scores of correct vs incorrect responses;
- :func:`plot_reliability` (record lists): the reliability diagram behind the ECE.

Files are written atomically. Figures are built with ``matplotlib.figure.Figure`` and the Agg
canvas directly, so they work in threads and never open a window.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from laser_rl.core import SCORE_THRESHOLD
from laser_rl.evaluation.metrics import (
    ECE_BINS,
    VERIFICATION_KEYS,
    VOTING_METHODS,
    format_metric,
    reliability_bins,
    validate_record,
)
from laser_rl.io import atomic_path, write_text_atomic

ACCURACY_PLOT = "accuracy_vs_k.png"
HISTOGRAM_PLOT = "score_histograms.png"
RELIABILITY_PLOT = "reliability.png"

METHOD_LABELS = {"maj": "majority vote", "weighted_maj": "self-reward weighted vote", "best_of": "best-of-k", "pass": "pass@k"}

Records = Sequence[Mapping[str, Any]]


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def voting_ks(metrics: Mapping[str, Any]) -> list[int]:
    """The ks present in a metrics dict's ``voting`` section, ascending."""
    ks = {int(key.split("@", 1)[1]) for key in metrics.get("voting", {})}
    return sorted(ks)


# --------------------------------------------------------------------------- plots


def plot_accuracy_vs_k(metrics_by_name: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Accuracy vs k. One model: one panel with the four methods (+ the log-prob baselines' weighted
    vote, dashed). Several models: one panel per method, one line per model."""
    names = list(metrics_by_name)
    if len(names) <= 1:
        fig = _new_figure(6.4, 4.4)
        ax = fig.add_subplot()
        m = metrics_by_name[names[0]] if names else {}
        ks = voting_ks(m)
        for method in VOTING_METHODS:
            ax.plot(ks, [m["voting"][f"{method}@{k}"] for k in ks], marker="o", label=METHOD_LABELS[method])
        for b, entry in (m.get("baselines") or {}).items():
            ax.plot(ks, [entry[f"weighted_maj@{k}"] for k in ks], marker=".", linestyle="--",
                    label=f"{b.replace('_', ' ')} weighted vote")
        if "accuracy" in m:
            ax.axhline(m["accuracy"], color="grey", linestyle=":", label="mean accuracy")
        _k_axis(ax, ks)
        ax.set_title(f"Accuracy vs k{f' ({names[0]})' if names and names[0] else ''}")
        ax.legend(fontsize=8)
    else:
        fig = _new_figure(4.0 * len(VOTING_METHODS), 4.0)
        axes = fig.subplots(1, len(VOTING_METHODS), sharey=True)
        all_ks: set[int] = set()
        for ax, method in zip(axes, VOTING_METHODS):
            for name in names:
                m = metrics_by_name[name]
                ks = voting_ks(m)
                all_ks.update(ks)
                ax.plot(ks, [m["voting"][f"{method}@{k}"] for k in ks], marker="o", label=name)
            ax.set_title(METHOD_LABELS[method])
            _k_axis(ax, sorted(all_ks))
        axes[0].legend(fontsize=8)
    return _save(fig, path)


def _k_axis(ax: Any, ks: Sequence[int]) -> None:
    if ks:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(ks))
        ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)


def _arrays(records: Records) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, correct, finished) pooled over records; finished is all True when not recorded."""
    scores, correct, finished = [], [], []
    for i, r in enumerate(records):
        p = validate_record(r, i)
        scores.append(p.scores)
        correct.append(p.correct)
        fin = r.get("finished")
        finished.append(np.asarray(fin, dtype=bool) if fin is not None else np.ones(p.n, dtype=bool))
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
    return np.concatenate(scores), np.concatenate(correct), np.concatenate(finished)


def plot_score_histograms(records_by_name: Mapping[str, Records], path: str | os.PathLike[str]) -> Path:
    """Histogram of self-reward scores of finished responses, correct vs incorrect, one panel per model.

    Truncated responses are left out: their score is 0 by convention, not a measurement.
    """
    names = list(records_by_name)
    fig = _new_figure(5.0 * max(1, len(names)), 3.8)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(names)), squeeze=False)[0])
    for ax, name in zip(axes, names):
        scores, correct, finished = _arrays(records_by_name[name])
        s, c = scores[finished], correct[finished]
        if s.size:
            lo, hi = float(min(s.min(), 0.0)), float(max(s.max(), 1.0))
            bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)
            ax.hist(s[c], bins=bins, alpha=0.6, color="tab:green", label=f"correct ({int(c.sum())})")
            ax.hist(s[~c], bins=bins, alpha=0.6, color="tab:red", label=f"incorrect ({int((~c).sum())})")
        ax.axvline(SCORE_THRESHOLD, color="black", linestyle="--", linewidth=1, label=f"threshold {SCORE_THRESHOLD:g}")
        ax.set_xlabel("self-reward score r_s")
        ax.set_ylabel("responses")
        ax.set_title(f"Scores{f' ({name})' if name else ''}, finished responses")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_reliability(records_by_name: Mapping[str, Records], path: str | os.PathLike[str]) -> Path:
    """Reliability diagram: accuracy vs mean clamp(score, 0, 1) per ECE bin (all responses, as the
    ECE), with the share of responses per bin below."""
    names = list(records_by_name)
    fig = _new_figure(6.0, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    width = 1.0 / ECE_BINS / max(1, len(names))
    for j, name in enumerate(names):
        scores, correct, _ = _arrays(records_by_name[name])
        b = reliability_bins(scores, correct)
        conf, acc, count = np.array(b["confidence"]), np.array(b["accuracy"]), np.array(b["count"])
        keep = count > 0
        top.plot(conf[keep], acc[keep], marker="o", label=name or "model")
        left = np.arange(ECE_BINS) / ECE_BINS + j * width
        bottom.bar(left, count / max(1.0, count.sum()), width=width, align="edge", label=name or "model")
    top.set_ylabel("accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(-0.02, 1.02)
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    top.set_title("Reliability of the self-reward score")
    bottom.set_xlabel("confidence = clamp(score, 0, 1)")
    bottom.set_ylabel("share")
    return _save(fig, path)


# --------------------------------------------------------------------------- markdown


def _fmt(value: Any) -> str:
    if value is None or isinstance(value, float):
        return format_metric(value)
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def cost_line(cost: Mapping[str, Any]) -> str:
    """The self-verification pass's cost next to the self-reward's: LaSeR reads its score in the sampling
    loop, one decode step after EOS and no prefill; the second pass re-reads x + y + template."""
    return (
        f"Verification cost per response: self-reward 0 prefill + 1 decode token (the step after EOS); "
        f"self-verify {format_metric(cost['prefill_tokens_per_response'], '.1f')} prefill + "
        f"{format_metric(cost['decode_tokens_per_response'], '.1f')} decode tokens, "
        f"{format_metric(cost['seconds_per_response'], '.2e')} s "
        f"({cost['verified_responses']} responses verified in {format_metric(cost['seconds_total'], '.1f')} s)."
    )


def render_markdown(
    metrics_by_name: Mapping[str, Mapping[str, Any]],
    *,
    title: str = "Evaluation report",
    settings: Mapping[str, Any] | None = None,
    plots: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> str:
    """The report's markdown: settings, summary, self-verification, voting vs k, baselines, plots."""
    names = list(metrics_by_name)
    col = [n or "value" for n in names]
    out = [f"# {title}", ""]
    if settings:
        rows = [[k, f"`{json.dumps(v) if isinstance(v, (dict, list)) else v}`"] for k, v in settings.items()]
        out += [_table(["setting", "value"], rows), ""]
    out += ["## Summary", ""]
    rows = [[key] + [metrics_by_name[n][key] for n in names] for key in ("accuracy", "num_problems", "num_responses")]
    out += [_table(["metric", *col], rows), ""]
    out += [
        "## Self-verification",
        "",
        f"Predicted correct ⇔ score > {SCORE_THRESHOLD:g}. `hm_tpr_tnr` is the paper's \"F1\" (harmonic mean of the "
        "accuracy on correct and on incorrect responses); `f1` is the usual precision/recall F1.",
        "",
        _table(["model", *VERIFICATION_KEYS], [[c] + [metrics_by_name[n]["verification"][k] for k in VERIFICATION_KEYS]
                                               for n, c in zip(names, col)]),
        "",
        "## Voting accuracy vs k",
        "",
        "First k responses per problem; weighted votes sum clamp(score, 0, 1) per distinct answer; "
        "pass@k is the unbiased estimator over all n.",
        "",
    ]
    for n, c in zip(names, col):
        m = metrics_by_name[n]
        if len(names) > 1:
            out += [f"### {c}", ""]
        rows = [[k] + [m["voting"][f"{meth}@{k}"] for meth in VOTING_METHODS] for k in voting_ks(m)]
        out += [_table(["k", *(METHOD_LABELS[meth] for meth in VOTING_METHODS)], rows), ""]
    if any(metrics_by_name[n].get("baselines") for n in names):
        out += [
            "## Free baselines",
            "",
            "Signals a user has without LaSeR: the mean / minimum sampled-token log-prob of each response "
            "(weighted vote: weight = rank of the value among the first k responses / k), the verdict the "
            "response writes about itself (`verdict`: yes 1, no 0, none 0.5 as a score and 0 as a vote "
            "weight; plain majority when no answered response says yes) and a second verification pass "
            "(`self_verify`: p(yes) normalised over the yes/no tokens, weighted like the self-reward). "
            "hm(TPR, TNR) needs a probability (score > 0.5), so it is n/a for the log-probs.",
            "",
        ]
        for n, c in zip(names, col):
            m = metrics_by_name[n]
            base = m.get("baselines") or {}
            if not base:
                continue
            ks = voting_ks(m)
            header = ["score", "auroc", "within_problem_auroc", "hm_tpr_tnr", *(f"weighted_maj@{k}" for k in ks),
                      f"best_of@{ks[-1]}"]
            v = m["verification"]
            rows = [["self-reward", v["auroc"], v["within_problem_auroc"], v["hm_tpr_tnr"],
                     *(m["voting"][f"weighted_maj@{k}"] for k in ks), m["voting"][f"best_of@{ks[-1]}"]]]
            rows += [[b, e["auroc"], e["within_problem_auroc"], e.get("hm_tpr_tnr"),
                      *(e[f"weighted_maj@{k}"] for k in ks), e[f"best_of@{ks[-1]}"]] for b, e in base.items()]
            if len(names) > 1:
                out += [f"### {c}", ""]
            out += [_table(header, rows), ""]
            cost = (base.get("self_verify") or {}).get("cost")
            if cost:
                out += [cost_line(cost), ""]
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    if notes:
        out += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(out)


def write_report(
    out_dir: str | os.PathLike[str],
    metrics_by_name: Mapping[str, Mapping[str, Any]],
    records_by_name: Mapping[str, Records],
    *,
    title: str = "Evaluation report",
    settings: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    filename: str = "report.md",
) -> Path:
    """Write the three PNGs and ``report.md`` (each atomically) into ``out_dir``; returns the report path."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    plots = [
        plot_accuracy_vs_k(metrics_by_name, folder / ACCURACY_PLOT),
        plot_score_histograms(records_by_name, folder / HISTOGRAM_PLOT),
        plot_reliability(records_by_name, folder / RELIABILITY_PLOT),
    ]
    text = render_markdown(metrics_by_name, title=title, settings=settings, plots=[p.name for p in plots], notes=notes)
    path = folder / filename
    write_text_atomic(path, text)
    return path


__all__ = [
    "ACCURACY_PLOT",
    "HISTOGRAM_PLOT",
    "RELIABILITY_PLOT",
    "cost_line",
    "plot_accuracy_vs_k",
    "plot_reliability",
    "plot_score_histograms",
    "render_markdown",
    "voting_ks",
    "write_report",
]
