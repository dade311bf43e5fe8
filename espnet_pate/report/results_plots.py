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
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402

from espnet_pate.report.results_rows import PRIVATE_KINDS  # noqa: E402

__all__ = ["plot_paths", "write_plots"]


def plot_paths(results: Path) -> Tuple[Path, Path]:
    stem = Path(results).with_suffix("")
    return Path(f"{stem}_wer_vs_epsilon.png"), Path(f"{stem}_labels_vs_epsilon.png")


def _series(groups: List[Dict], value) -> Dict[Tuple[str, str], List[Tuple[float, float, float]]]:
    """{(method, source): [(epsilon, mean, sd)]} of the private rows with a finite positive epsilon and a value."""
    out: Dict[Tuple[str, str], List[Tuple[float, float, float]]] = {}
    for g in groups:
        eps, v = g["privacy"].get("epsilon"), value(g)
        if g["kind"] not in PRIVATE_KINDS or v is None or eps is None:
            continue
        if not (0 < float(eps) < math.inf):
            continue
        out.setdefault((g["method"], g["source"]), []).append((float(eps), v[0], v[1]))
    return {k: sorted(v) for k, v in sorted(out.items())}


def _figure(series, ylabel: str, title: str, lines: Dict[str, float], methods: List[str]):
    """One colour per method, one line style per public audio source; the legend sits outside the axes so that
    it hides no point, and the epsilon axis is labelled at the budgets that were run. ``methods`` fixes the colours,
    the same in every plot."""
    sources = sorted({s for _, s in series} - {"-"})  # "-": no public audio (DP-SGD), drawn solid
    colours = plt.get_cmap("tab10")
    styles = ("-", "--", "-.", ":")
    fig, ax = plt.subplots(figsize=(9.0, 4.6))
    for (method, source), pts in series.items():
        x, y, err = zip(*pts)
        if source == "-":
            label, style = method, "-"
        else:
            label, style = f"{method}, {source}", styles[sources.index(source) % len(styles)]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label, color=colours(methods.index(method) % 10),
                    linestyle=style)
    for (label, y), style in zip(lines.items(), ("--", ":")):
        ax.axhline(y, color="grey", linestyle=style, label=label)
    ax.set_xscale("log")
    # ticks at the budgets asked for: a released 7.92 or 3.999 sits at the 8 or 4 tick, not at a label of its own
    budgets = sorted({float(f"{x:.1g}") for pts in series.values() for x, _, _ in pts})
    if budgets:
        ax.xaxis.set_major_locator(FixedLocator(budgets))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))  # 0.1, 1, 2, 8 rather than powers of ten
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("released epsilon (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    if series or lines:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def _draw(path: Path, series, ylabel: str, title: str, lines: Dict[str, float], methods: List[str]) -> None:
    fig = _figure(series, ylabel, title, lines, methods)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(groups: List[Dict], results: Path, set_name: str = "test") -> Tuple[Path, Path]:
    wer_png, labels_png = plot_paths(results)
    lines = {}
    for kind, label in (("public_only", "public-only (epsilon 0)"), ("nonprivate", "non-private (epsilon inf)")):
        w = next((g["wer"].get(set_name) for g in groups if g["kind"] == kind and g["wer"].get(set_name)), None)
        if w is not None:
            lines[label] = w[0]
    methods = sorted({g["method"] for g in groups if g["kind"] in PRIVATE_KINDS})
    _draw(wer_png, _series(groups, lambda g: g["wer"].get(set_name)), f"WER {set_name} %",
          f"{set_name} WER against the privacy budget", lines, methods)
    _draw(labels_png, _series([g for g in groups if g["kind"] == "pate"], lambda g: g["labels"]),
          "labelled utterances released", "PATE labels against the privacy budget", {}, methods)
    return wer_png, labels_png
