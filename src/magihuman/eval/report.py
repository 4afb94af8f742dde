"""The self-contained HTML reports: tables and matplotlib figures embedded as base64 PNG.

A run report shows the aggregates, three figures (metrics per clip, sync curves, stage times) and the
per-clip table; a comparison report shows the aggregates of two runs side by side with their
differences, a bar chart of the shared figures and both runs' median sync curves.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

import numpy as np

__all__ = ["run_html", "comparison_html", "figure_png"]

_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}"
          "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
          "td:first-child,th:first-child{text-align:left}img{max-width:100%}")


def figure_png(fig) -> str:
    """A matplotlib figure as base64 PNG text (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _get(score: dict, *path: str) -> float | None:
    value: Any = score
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (bool, int, float)) and not _nan(value) else None


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _metrics_figure(clips: list[dict]) -> str | None:
    panels = [("colour parts right (%)", ("toy", "colour_accuracy"), 100.0),
              ("sync correlation", ("sync", "correlation"), 1.0),
              ("sync offset (frames)", ("sync", "offset_frames"), 1.0),
              ("first-frame PSNR (dB)", ("first_frame", "psnr_db"), 1.0),
              ("WER / CER", ("intelligibility", "rate"), 1.0)]
    present = [(t, p, s) for t, p, s in panels if any(_get(c, *p) is not None for c in clips)]
    if not present:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(present), 1, figsize=(10, 1.9 * len(present)), squeeze=False)
    ids = [c["id"] for c in clips]
    for ax, (title, path, scale) in zip(axes[:, 0], present):
        values = [(_get(c, *path) or 0.0) * scale for c in clips]
        ax.bar(range(len(ids)), values, color="#4878a8")
        ax.set_ylabel(title, fontsize=8)
        ax.set_xticks(range(len(ids)), ids if len(ids) <= 40 else [""] * len(ids), rotation=90, fontsize=6)
    fig.suptitle("metrics per clip")
    return figure_png(fig)


def _sync_figure(runs: dict[str, list[dict]]) -> str | None:
    curves = {name: [c["sync"] for c in clips if c.get("sync") and c["sync"].get("curve")]
              for name, clips in runs.items()}
    if not any(curves.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for (name, syncs), colour in zip(curves.items(), ("#4878a8", "#c8553d")):
        for sync in syncs:
            ax.plot(sync["lags"], [np.nan if v is None else v for v in sync["curve"]], color=colour, alpha=0.15,
                    lw=0.8)
        if syncs:
            table = np.array([[np.nan if v is None else v for v in s["curve"]] for s in syncs], dtype=float)
            ax.plot(syncs[0]["lags"], np.nanmedian(table, axis=0), color=colour, lw=2.2, label=f"{name} median")
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("lag (frames; positive: mouth after sound)")
    ax.set_ylabel("correlation")
    ax.legend(fontsize=8)
    ax.set_title("sync curves: mouth opening vs voice loudness")
    return figure_png(fig)


def _stage_figure(clips: list[dict]) -> str | None:
    timed = [c for c in clips if (c.get("performance") or {}).get("stage_s")]
    if not timed:
        return None
    plt = _pyplot()
    stages = list(dict.fromkeys(k for c in timed for k in c["performance"]["stage_s"]))
    fig, ax = plt.subplots(figsize=(10, 0.3 * len(timed) + 1.5))
    left = np.zeros(len(timed))
    for stage in stages:
        seconds = np.array([c["performance"]["stage_s"].get(stage, 0.0) for c in timed])
        ax.barh(range(len(timed)), seconds, left=left, label=stage)
        left += seconds
    ax.set_yticks(range(len(timed)), [c["id"] for c in timed], fontsize=6)
    ax.set_xlabel("seconds")
    ax.legend(fontsize=7, ncol=4)
    ax.set_title("stage times per clip")
    return figure_png(fig)


def _comparison_figure(metrics: dict[str, dict]) -> str | None:
    keys = [k for k, v in metrics.items() if k.endswith(("_pct", "_correlation", "_psnr_db", "_ssim", "wer", "cer"))
            and isinstance(v["a"], (int, float)) and isinstance(v["b"], (int, float))]
    if not keys:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(keys) + 1.5))
    y = np.arange(len(keys))
    ax.barh(y - 0.2, [metrics[k]["a"] for k in keys], height=0.4, label="A", color="#4878a8")
    ax.barh(y + 0.2, [metrics[k]["b"] for k in keys], height=0.4, label="B", color="#c8553d")
    ax.set_yticks(y, keys, fontsize=7)
    ax.legend()
    ax.set_title("A vs B")
    return figure_png(fig)


def _img(png: str | None, name: str) -> str:
    if png is None:
        return f"<p><i>{name}: no data</i></p>"
    return f'<h2>{name}</h2><img class="figure" alt="{name}" src="data:image/png;base64,{png}">'


def _fmt(value: Any) -> str:
    if value is None or _nan(value):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return html.escape(str(value))


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def _clip_table(clips: list[dict]) -> str:
    columns = [("colours right", ("toy", "colour_accuracy")), ("pitch", ("toy", "pitch")),
               ("pitch right", ("toy", "pitch_correct")), ("words", ("toy", "words")),
               ("words expected", ("toy", "words_expected")), ("sync offset (frames)", ("sync", "offset_frames")),
               ("sync corr.", ("sync", "correlation")),
               ("mouth open while speaking", ("toy", "mouth_open_while_speaking")),
               ("PSNR (dB)", ("first_frame", "psnr_db")),
               ("SSIM", ("first_frame", "ssim")), ("WER/CER", ("intelligibility", "rate")),
               ("wall (s)", ("performance", "wall_s"))]
    used = [(n, p) for n, p in columns if any(_dig(c, p) is not None for c in clips)]
    head = "".join(f"<th>{n}</th>" for n, _ in used)
    rows = "".join(f"<tr><td>{html.escape(c['id'])}</td>" + "".join(f"<td>{_fmt(_dig(c, p))}</td>" for _, p in used)
                   + "</tr>" for c in clips)
    return f"<h2>clips</h2><table><tr><th>id</th>{head}</tr>{rows}</table>"


def _dig(score: dict, path: tuple[str, ...]) -> Any:
    value: Any = score
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def run_html(report: dict) -> str:
    """The HTML page of one run report (see :func:`magihuman.eval.runner.write_report`)."""
    clips = report["clips"]
    settings = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>"
                       for k, v in report.get("settings", {}).items())
    figures = "".join(_img(png, name) for png, name in (
        (_metrics_figure(clips), "metrics per clip"), (_sync_figure({"run": clips}), "sync curves"),
        (_stage_figure(clips), "stage times")))
    aggregates = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>"
                         for k, v in report["aggregate"].items())
    body = (f"<h2>settings</h2><table>{settings}</table><h2>aggregates</h2><table>{aggregates}</table>"
            f"{figures}{_clip_table(clips)}")
    return _page("magihuman eval: run report", body)


def comparison_html(comparison: dict) -> str:
    """The HTML page comparing two runs (see :func:`magihuman.eval.runner.compare_reports`)."""
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v['a'])}</td><td>{_fmt(v['b'])}</td>"
                   f"<td>{_fmt(v['b_minus_a'])}</td></tr>" for k, v in comparison["metrics"].items())
    runs = comparison["runs"]
    figures = "".join(_img(png, name) for png, name in (
        (_comparison_figure(comparison["metrics"]), "aggregates side by side"),
        (_sync_figure({"A": runs["a"]["clips"], "B": runs["b"]["clips"]}), "sync curves")))
    body = (f"<p>A: {html.escape(comparison['a'])}<br>B: {html.escape(comparison['b'])}</p>"
            f"<table><tr><th>metric</th><th>A</th><th>B</th><th>B - A</th></tr>{rows}</table>{figures}")
    return _page("magihuman eval: comparison", body)
