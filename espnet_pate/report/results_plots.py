"""Stage 7's plots, PNG beside RESULTS.md, from the grouped rows of ``results_rows``:

- ``RESULTS_wer_vs_epsilon.png``: test WER against the released epsilon (log axis), one line per method and public
  audio source (DP-SGD full and head, each PATE mechanism), public-only and non-private as horizontal lines;
- ``RESULTS_labels_vs_epsilon.png``: labels released against epsilon, one line per PATE mechanism and source.

Repeats show their mean with the sample standard deviation as error bars.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

__all__ = ["plot_paths", "write_plots"]


def plot_paths(results: Path) -> Tuple[Path, Path]:
    stem = Path(results).with_suffix("")
    return Path(f"{stem}_wer_vs_epsilon.png"), Path(f"{stem}_labels_vs_epsilon.png")


def _series(groups: List[Dict], value) -> Dict[str, List[Tuple[float, float, float]]]:
    """{label: [(epsilon, mean, sd)]} of the private rows with a finite positive epsilon and a value."""
    out: Dict[str, List[Tuple[float, float, float]]] = {}
    for g in groups:
        eps, v = g["privacy"].get("epsilon"), value(g)
        if g["kind"] not in ("dpsgd", "pate", "other") or v is None or eps is None:
            continue
        if not (0 < float(eps) < math.inf):
            continue
        label = g["method"] if g["source"] == "-" else f"{g['method']}, {g['source']}"
        out.setdefault(label, []).append((float(eps), v[0], v[1]))
    return {k: sorted(v) for k, v in sorted(out.items())}


def _draw(path: Path, series, ylabel: str, title: str, lines: Dict[str, float]) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, pts in series.items():
        x, y, err = zip(*pts)
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    for (label, y), style in zip(lines.items(), ("--", ":")):
        ax.axhline(y, color="grey", linestyle=style, label=label)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda x, _: f"{x:g}")  # 0.5, 1, 2, 8 rather than powers of ten
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("released epsilon (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if series or lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(groups: List[Dict], results: Path, set_name: str = "test") -> Tuple[Path, Path]:
    wer_png, labels_png = plot_paths(results)
    lines = {}
    for kind, label in (("public_only", "public-only (epsilon 0)"), ("nonprivate", "non-private (epsilon inf)")):
        w = next((g["wer"].get(set_name) for g in groups if g["kind"] == kind and g["wer"].get(set_name)), None)
        if w is not None:
            lines[label] = w[0]
    _draw(wer_png, _series(groups, lambda g: g["wer"].get(set_name)), f"WER {set_name} %",
          f"{set_name} WER against the privacy budget", lines)
    _draw(labels_png, _series([g for g in groups if g["kind"] == "pate"], lambda g: g["labels"]),
          "labelled utterances released", "PATE labels against the privacy budget", {})
    return wer_png, labels_png
