"""``report.json`` -> ``report.md`` and PNG plots, for ``lmforge compare``.

The report is plain data, so it can be re-rendered (``lmforge compare --from DIR/report.json``) without
retraining. Its shape::

    {"title", "created", "command", "notes": [str], "machine": {...}, "settings": {...},
     "target_loss": float | null,
     "models": {name: {"family", "description", "config", "metrics": {key: number | {"unavailable": why}},
                       "curves": {"val": [{"step", "tokens", "time_s", "loss"}], "decode_ms_per_token": [ms]},
                       "memory_methods": {...}, "samples": [{"prompt", "completion"}]}}}

The Markdown has one table (a row per metric in :data:`METRICS`, a column per model) in which every cell holds
a figure or says why there is none, then a paragraph written from the figures, the plots, the samples and the
machine.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from lmforge.errors import DataError
from lmforge.utils.files import atomic_path, atomic_write_json, atomic_write_text

__all__ = ["Metric", "METRICS", "load_report", "render_markdown", "summary_paragraph", "write_plots", "write_report"]

_MIB = 2**20


@dataclass(frozen=True)
class Metric:
    """One row of the table: the key in ``metrics``, its label, how to format it and which way is better."""

    key: str
    label: str
    fmt: Callable[[float], str]
    better: Optional[str] = None  # "lower", "higher" or None (a description, not a contest)
    noun: str = ""  # how the summary paragraph names it


def _int(v: float) -> str:
    return f"{int(round(v)):,}"


def _f(digits: int) -> Callable[[float], str]:
    return lambda v: f"{v:,.{digits}f}"


def _mib(v: float) -> str:
    return f"{v / _MIB:,.1f} MiB"


def _secs(v: float) -> str:
    return f"{v:,.1f} s"


METRICS: tuple[Metric, ...] = (
    Metric("params_total", "Parameters, total", _int, None, "parameters"),
    Metric("params_embedding", "Parameters, embedding", _int),
    Metric("params_body", "Parameters, recurrent / attention layers", _int),
    Metric("params_output", "Parameters, output head (0 when tied to the embedding)", _int),
    Metric("train_tokens_per_s", "Training throughput (tokens/s)", _int, "higher", "training throughput"),
    Metric("train_wall_s", "Training time (periodic evaluation excluded)", _secs),
    Metric("train_tokens", "Training tokens seen", _int),
    Metric("time_to_target_s", "Time to reach the shared target loss", _secs, "lower", "time to the shared target loss"),
    Metric("val_loss", "Validation loss (nats/token)", _f(4), "lower", "validation loss"),
    Metric("perplexity", "Validation perplexity (per token)", _f(2), "lower", "perplexity"),
    Metric("bits_per_char", "Bits per character (validation)", _f(4), "lower", "bits per character"),
    Metric("bits_per_byte", "Bits per byte (validation)", _f(4), "lower", "bits per byte"),
    Metric("latency_b1_ms", "Forward latency, batch 1 (ms)", _f(2), "lower", "forward latency at batch 1"),
    Metric("latency_b32_ms", "Forward latency, batch 32 (ms)", _f(1), "lower", "forward latency at batch 32"),
    Metric("gen_tokens_per_s_b1", "Generation, batch 1 (tokens/s)", _f(1), "higher", "generation speed at batch 1"),
    Metric("gen_tokens_per_s_b32", "Generation, batch 32 (tokens/s)", _f(1), "higher", "generation speed at batch 32"),
    Metric("decode_ms_start", "Time per token, median of the first 16 generated (ms)", _f(3), "lower"),
    Metric("decode_ms_end", "Time per token, median of the last 16 generated (ms)", _f(3), "lower", "time per token late in a long generation"),
    Metric("train_peak_memory_bytes", "Peak memory, training", _mib, "lower", "peak training memory"),
    Metric("train_memory_increase_bytes", "Memory added by training (peak - start)", _mib, "lower"),
    Metric("infer_peak_memory_bytes", "Peak memory, inference", _mib, "lower", "peak inference memory"),
    Metric("infer_memory_increase_bytes", "Memory added by inference (peak - start)", _mib, "lower"),
    Metric("disk_bytes", "Size on disk (model.safetensors)", _mib, "lower", "size on disk"),
)


def load_report(path: str | Path) -> dict[str, Any]:
    """Reads a ``report.json`` written by :func:`write_report` (a folder holding one is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise DataError(f"report {path} does not exist; pass the report.json written by `lmforge compare --out DIR`")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"report {path} is not valid JSON ({err}); re-run `lmforge compare` to write it again") from None
    if not isinstance(report, dict) or not isinstance(report.get("models"), dict) or not report["models"]:
        raise DataError(f"report {path} has no 'models' section; it was not written by `lmforge compare`")
    return report


# ------------------------------------------------------------------------------------------------ the table
def _value(entry: dict[str, Any], key: str) -> Optional[float]:
    v = entry.get("metrics", {}).get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _cell(entry: dict[str, Any], metric: Metric) -> str:
    raw = entry.get("metrics", {}).get(metric.key)
    value = _value(entry, metric.key)
    if value is not None:
        return metric.fmt(value)
    if isinstance(raw, dict) and raw.get("unavailable"):
        return f"n/a: {raw['unavailable']}"
    if isinstance(raw, (int, float)):  # nan or inf
        return f"n/a: the measurement gave {raw}"
    return "n/a: not recorded in this report.json (written by an older lmforge?)"


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(report: dict[str, Any]) -> str:
    names = list(report["models"])
    target = report.get("target_loss")
    lines = ["| Metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for m in METRICS:
        label = m.label
        if m.key == "time_to_target_s" and isinstance(target, (int, float)):
            label = f"{label} ({target:.4f})"
        if m.key.startswith("decode_ms") and report.get("settings", {}).get("decode_length"):
            label += f" of {report['settings']['decode_length']}"
        cells = [_escape(_cell(report["models"][n], m)) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- the paragraph
def _compare(report: dict[str, Any], metric: Metric) -> Optional[str]:
    """'A won on X: 1.2 against 1.5 for B (20% lower).' or None when fewer than two models have the figure."""
    vals = [(n, _value(e, metric.key)) for n, e in report["models"].items()]
    vals = [(n, v) for n, v in vals if v is not None]
    if len(vals) < 2 or metric.better is None:
        return None
    vals.sort(key=lambda nv: nv[1], reverse=metric.better == "higher")
    (best, bv), (second, sv) = vals[0], vals[1]
    if metric.fmt(bv) == metric.fmt(sv):
        return f"TIE:{metric.noun} ({metric.fmt(bv)})"
    if metric.better == "higher":
        how = f"{bv / sv:.2f}x" if sv > 0 else "infinitely"
        return f"{best} led on {metric.noun}: {metric.fmt(bv)} against {metric.fmt(sv)} for {second} ({how} as much)."
    pct = (sv - bv) / sv * 100 if sv else 0.0
    how = f"{sv / bv:.1f}x lower" if pct >= 50 and bv > 0 else f"{pct:.1f}% lower" if pct < 10 else f"{pct:.0f}% lower"
    return f"{best} led on {metric.noun}: {metric.fmt(bv)} against {metric.fmt(sv)} for {second} ({how})."


def summary_paragraph(report: dict[str, Any]) -> str:
    """A short paragraph written from the figures: who won what, by how much, and under which conditions."""
    models = report["models"]
    settings = report.get("settings", {})
    machine = report.get("machine", {})
    by_key = {m.key: m for m in METRICS}
    parts = []
    budget = settings.get("budget_description")
    where = machine.get("gpu", {}).get("name") if isinstance(machine.get("gpu"), dict) else None
    where = where or f"{machine.get('cpu', 'an unknown CPU')} ({machine.get('usable_cores', machine.get('cores', '?'))} cores)"
    if budget:
        parts.append(f"Each model had {budget} on {where}, with the same data and {settings.get('tokenizer', 'the same')} tokenizer.")
    ties = []
    for key in ("bits_per_char", "train_tokens_per_s", "time_to_target_s", "latency_b1_ms",
                "latency_b32_ms", "gen_tokens_per_s_b1", "gen_tokens_per_s_b32", "decode_ms_end",
                "train_peak_memory_bytes", "infer_peak_memory_bytes", "disk_bytes"):
        sentence = _compare(report, by_key[key])
        if sentence and sentence.startswith("TIE:"):
            ties.append(sentence[4:])
        elif sentence:
            parts.append(sentence)
    if ties:
        parts.append(f"The two best were level on {', '.join(ties)}.")
    growth = []
    for name, entry in models.items():
        a, b = _value(entry, "decode_ms_start"), _value(entry, "decode_ms_end")
        if a and b:
            growth.append(f"{b / a:.1f}x for {name}")
    if growth:
        parts.append(f"From the first to the last 16 generated tokens the time per token changed by {', '.join(growth)} "
                     "(a Transformer attends over a growing cache; an LSTM's step costs the same at every position).")
    target = report.get("target_loss")
    if isinstance(target, (int, float)):
        parts.append(f"The shared target loss {target:.4f} is the highest of the models' best validation losses, so every model reaches it.")
    parts.append("Timings come from one run each (medians of repeated calls after a warm-up); differences of a few "
                 "percent are within the noise of a machine doing other work.")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------------ markdown
def render_markdown(report: dict[str, Any], plots: Optional[list[str]] = None) -> str:
    """The ``report.md`` text: title, table, paragraph, notes, plots, samples, settings and machine."""
    out = [f"# {report.get('title', 'lmforge compare')}", ""]
    if report.get("command"):
        out += ["Command:", "", f"```\n{report['command']}\n```", ""]
    out += [_table(report), "", summary_paragraph(report), ""]
    notes = list(report.get("notes") or [])
    methods = sorted({m for e in report["models"].values() for m in (e.get("memory_methods") or {}).values() if m})
    if methods:
        isolated = report.get("settings", {}).get("isolated_processes")
        where = " Each model was trained in one fresh process and measured in another." if isolated else ""
        notes.append(f"Memory is the {' / '.join(methods)}.{where}")
    if notes:
        out += ["## Notes", ""] + [f"- {_escape(n)}" for n in notes] + [""]
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    out += ["## Samples", ""]
    for name, entry in report["models"].items():
        for s in entry.get("samples") or []:
            out += [f"**{name}**, prompt `{_escape(s['prompt'])}`:", "", "```", s["prompt"] + s["completion"], "```", ""]
        if not entry.get("samples"):
            out += [f"**{name}**: no samples ({entry.get('samples_unavailable', 'not recorded')}).", ""]
    out += ["## Models", ""]
    for name, entry in report["models"].items():
        out.append(f"- **{name}** ({entry.get('family', '?')}): {_escape(entry.get('description', ''))}")
    out += ["", "## Settings and machine", "", "```json",
            json.dumps({"settings": report.get("settings", {}), "machine": report.get("machine", {}),
                        "created": report.get("created")}, indent=2), "```", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------- plots
def _figure(width: float = 6.4, height: float = 4.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)  # the Agg canvas: no display, no global pyplot state
    return fig


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _rolling_median(values: list[float], window: int) -> list[float]:
    half = window // 2
    return [statistics.median(values[max(0, i - half):i + half + 1]) for i in range(len(values))]


def write_plots(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Writes ``loss_vs_time.png``, ``loss_vs_tokens.png``, ``decode_time.png`` and ``memory.png``.

    Returns:
        The paths written (a plot with no data for any model is skipped).
    """
    out_dir = Path(out_dir)
    models = report["models"]
    target = report.get("target_loss")
    written = []
    for xkey, xlabel, fname in (("time_s", "training time (s, evaluation excluded)", "loss_vs_time.png"),
                                ("tokens", "training tokens seen", "loss_vs_tokens.png")):
        fig = _figure()
        ax = fig.add_subplot()
        drawn = False
        for name, entry in models.items():
            pts = [(p[xkey], p["loss"]) for p in (entry.get("curves") or {}).get("val", []) if p.get(xkey) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=name)
                drawn = True
        if not drawn:
            continue
        if isinstance(target, (int, float)):
            ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"shared target {target:.3f}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss (nats/token)")
        ax.set_title(f"Validation loss against {xlabel.split(' (')[0]}")
        ax.grid(alpha=0.3)
        ax.legend()
        _save(fig, out_dir / fname)
        written.append(out_dir / fname)

    fig = _figure()
    ax = fig.add_subplot()
    drawn = False
    for name, entry in models.items():
        ms = (entry.get("curves") or {}).get("decode_ms_per_token") or []
        if ms:
            line, = ax.plot(range(1, len(ms) + 1), ms, linewidth=0.6, alpha=0.35)
            ax.plot(range(1, len(ms) + 1), _rolling_median(ms, 9), color=line.get_color(), linewidth=1.6,
                    label=f"{name} (rolling median of 9)")
            drawn = True
    if drawn:
        ax.set_xlabel("position of the generated token")
        ax.set_ylabel("time per token (ms), batch 1")
        ax.set_title("Generation time per token as the output grows")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
        _save(fig, out_dir / "decode_time.png")
        written.append(out_dir / "decode_time.png")

    phases = (("train", "training"), ("infer", "inference"))
    names = list(models)
    if any(_value(models[n], f"{p}_peak_memory_bytes") is not None for n in names for p, _ in phases):
        fig = _figure()
        ax = fig.add_subplot()
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            xs = [j + i * width for j in range(len(phases))]
            peaks = [(_value(models[name], f"{p}_peak_memory_bytes") or 0) / _MIB for p, _ in phases]
            adds = [(_value(models[name], f"{p}_memory_increase_bytes") or 0) / _MIB for p, _ in phases]
            bars = ax.bar(xs, [p - a for p, a in zip(peaks, adds)], width, label=f"{name}: memory at the start")
            colour = bars.patches[0].get_facecolor()
            ax.bar(xs, adds, width, bottom=[p - a for p, a in zip(peaks, adds)], color=colour, alpha=0.45, hatch="//",
                   edgecolor="black", linewidth=0.5, label=f"{name}: added by the phase")
            for x, p in zip(xs, peaks):
                ax.annotate(f"{p:,.0f}", (x, p), ha="center", va="bottom", fontsize=8)
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(phases))], [label for _, label in phases])
        ax.set_ylabel("MiB")
        ax.set_title("Peak memory per phase")
        ax.legend(fontsize=8)
        _save(fig, out_dir / "memory.png")
        written.append(out_dir / "memory.png")
    return written


def write_report(report: dict[str, Any], out_dir: str | Path, json_too: bool = True) -> dict[str, Path]:
    """Writes ``report.json`` (unless ``json_too`` is False), the plots and ``report.md`` into ``out_dir``.

    Returns:
        ``{"json", "markdown", "plots": [...]}`` paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Any] = {}
    if json_too:
        atomic_write_json(out_dir / "report.json", report)
        paths["json"] = out_dir / "report.json"
    plots = write_plots(report, out_dir)
    atomic_write_text(out_dir / "report.md", render_markdown(report, [p.name for p in plots]))
    paths["markdown"] = out_dir / "report.md"
    paths["plots"] = plots
    return paths
