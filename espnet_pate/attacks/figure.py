"""The inversion figure: each target's original log-mel beside its reconstruction by each model (a PNG)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

__all__ = ["inversion_figure"]


def inversion_figure(arrays: Dict[str, Dict[str, np.ndarray]], columns: Sequence[str], utts: Sequence[str],
                     path: os.PathLike | str, titles: Dict[str, str] | None = None) -> Path:
    """``arrays[column][utt]`` [T, F]; one row per utterance, one column per entry of ``columns`` (the first is
    normally "original"). Each row shares the original's colour scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = titles or {}
    fig, axes = plt.subplots(len(utts), len(columns), figsize=(3.2 * len(columns), 2.4 * len(utts)), squeeze=False)
    for i, utt in enumerate(utts):
        ref = arrays[columns[0]][utt]
        lo, hi = np.percentile(ref, [1, 99])
        for j, col in enumerate(columns):
            ax = axes[i][j]
            ax.imshow(arrays[col][utt].T, origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma")
            ax.set_title(titles.get(col, col) if i == 0 else "", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(utt, fontsize=7)
    fig.suptitle("Model inversion from transcripts (log-mel; operator diagnostic, sensitive data: not for release)",
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
