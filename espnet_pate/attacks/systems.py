"""The systems an audit attacks: every released model directly under the experiment root (a privacy.json with
an epsilon, not a teacher), plus the public-only model (epsilon 0) as the floor. Teachers are never released, so
they are not audited here. Of repeats of one setting (``<system>_seed<N>``, which differ only in their noise) the
first is audited: a sweep's three repeats would triple the stage for no new question."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

from espnet_pate.asr.decode import MODEL_FILE
from espnet_pate.report.privacy_json import read_privacy_info
from espnet_pate.report.results_rows import SEED

__all__ = ["audited_systems", "kind_of"]


def kind_of(claim: dict) -> str:
    """public-only | non-private | DP-SGD | PATE student | other, from a privacy.json."""
    mech = str(claim.get("mechanism", ""))
    if mech == "public_only":
        return "public-only"
    if mech == "none":
        return "non-private"
    if mech == "dpsgd":
        return "DP-SGD"
    if mech.startswith("PATE") or "inherited_from" in claim:
        return "PATE student"
    return "other"


def audited_systems(exp_root: os.PathLike | str) -> List[Path]:
    exp_root = Path(exp_root)
    out = []
    for d in sorted(p for p in exp_root.iterdir() if p.is_dir()):
        claim = read_privacy_info(d)
        if SEED.match(d.name):
            continue
        if (d / MODEL_FILE).exists() and claim.get("epsilon") is not None and claim.get("mechanism") != "teacher":
            out.append(d)
    if not out:
        raise FileNotFoundError(f"{exp_root}: no released model (a directory with {MODEL_FILE} and a privacy.json "
                                "with an epsilon): run stages 3-6 first")
    return out
