"""The rows of stage 7's tables, read from the experiment directories.

A system ``exp/<name>`` gives its claim (``privacy.json``), its scores (``decode_<config>/<set>/score.json``) and, for
a PATE student, the labels it learnt from: the stage-4 release it inherited its claim from
(``inherited_from/privacy_report.json``: labelled utterances) and the public audio they label (``public_data``,
written by stage 5). Repeats of one system at the same settings are named ``<name>_seed<N>``; they form one row
(mean and sample standard deviation) and must carry the same claim.

Kinds: ``public_only`` and ``nonprivate`` (the two reference lines), ``dpsgd`` (part ``full``, or ``head`` for the
``dpsgd_head_*`` systems of stage 6: DP-SGD on the teachers' part), ``pate`` (students), ``other`` (a released
claim of another mechanism), ``diagnostic`` (teachers and anything without a claim: operator diagnostics).
"""
from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from espnet_pate.report.privacy_json import PUBLIC_MECHANISMS, read_privacy_info

SEED = re.compile(r"^(?P<base>.+)_seed(?P<seed>\d+)$")
CLAIM_KEYS = ("mechanism", "epsilon", "delta", "unit", "accountant", "target_epsilon", "public_data")
PRIVATE_KINDS = ("dpsgd", "pate", "other")  # released with a finite claim that the ledger must hold

__all__ = ["PRIVATE_KINDS", "SEED", "base_name", "collect_rows", "group_rows", "kind_of", "mean_sd", "read_scores",
           "relative_columns"]


def base_name(system: str) -> str:
    m = SEED.match(system)
    return m.group("base") if m else system


def kind_of(system: str, privacy: Dict) -> Tuple[str, str]:
    """(kind, method) of a system; see the module docstring."""
    mech, eps = str(privacy.get("mechanism", "")), privacy.get("epsilon")
    if mech in PUBLIC_MECHANISMS:
        return "public_only", "public-only"
    if eps is None or mech == "teacher":
        return "diagnostic", "-"
    if mech == "none" and math.isinf(float(eps)):
        return "nonprivate", "non-private"
    if mech == "dpsgd":
        head = Path(base_name(system)).name.startswith("dpsgd_head_")
        return "dpsgd", "DP-SGD head" if head else "DP-SGD full"
    if mech.startswith("PATE "):
        return "pate", "PATE " + mech.split()[1]
    return "other", mech


def read_scores(system_dir: Path, decode_dir: str, sets: Sequence[str]) -> Dict[str, Dict]:
    out = {}
    for name in sets:
        path = Path(system_dir) / decode_dir / name / "score.json"
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out


def _labels(privacy: Dict) -> Optional[int]:
    """Utterances labelled by the release a student inherited its claim from (its stage-4 report)."""
    source = privacy.get("inherited_from")
    report = Path(source) / "privacy_report.json" if source else None
    if report is None or not report.exists():
        return None
    return int(json.loads(report.read_text())["utterances"]["written"])


def collect_rows(exp_root: Path, system_dirs: Sequence[Path], decode_dir: str, sets: Sequence[str]) -> List[Dict]:
    """One row per system directory (not grouped)."""
    rows = []
    for d in system_dirs:
        d = Path(d)
        name = str(d.relative_to(exp_root)) if exp_root else d.name
        privacy = read_privacy_info(d)
        kind, method = kind_of(name, privacy)
        rows.append({"system": name, "dir": d, "privacy": privacy, "kind": kind, "method": method,
                     "scores": read_scores(d, decode_dir, sets),
                     "labels": _labels(privacy) if kind == "pate" else None})
    return rows


def mean_sd(values: Sequence[Optional[float]]) -> Optional[Tuple[float, float, int]]:
    """(mean, sample standard deviation, n) of the values that exist; None when none does."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def group_rows(rows: List[Dict]) -> List[Dict]:
    """Seeds of one system (``<name>_seed<N>``) as one row: mean and spread of every figure; their claims must
    agree (they are repeats at the same settings) or this raises ValueError."""
    groups: Dict[str, List[Dict]] = {}
    for r in rows:
        groups.setdefault(base_name(r["system"]), []).append(r)
    out = []
    for name, members in groups.items():
        claims = {json.dumps({k: m["privacy"].get(k) for k in CLAIM_KEYS}, sort_keys=True, default=str)
                  for m in members}
        if len(claims) > 1:
            raise ValueError(f"the seeds of {name} ({', '.join(m['system'] for m in members)}) carry different "
                             f"claims: not repeats at the same settings: {sorted(claims)}")
        sets = sorted({s for m in members for s in m["scores"]})
        first = members[0]
        out.append({
            "system": name, "members": [m["system"] for m in members], "dirs": [m["dir"] for m in members],
            "runs": len(members), "privacy": first["privacy"], "kind": first["kind"], "method": first["method"],
            "source": first["privacy"].get("public_data", "-") if first["kind"] == "pate" else "-",
            "wer": {s: mean_sd([m["scores"].get(s, {}).get("wer") for m in members]) for s in sets},
            "withheld": {s: mean_sd([m["scores"].get(s, {}).get("keywords", {}).get("recall") for m in members])
                         for s in sets},
            "labels": mean_sd([m["labels"] for m in members]),
            "pseudo_label_wer": mean_sd([m["privacy"].get("pseudo_label_wer") for m in members]),
        })
    order = ("public_only", "nonprivate", "dpsgd", "pate", "other", "diagnostic")
    return sorted(out, key=lambda g: (order.index(g["kind"]), g["method"], g["source"],
                                      float(g["privacy"].get("epsilon") or 0), g["system"]))


def _budget(row: Dict):
    return row["privacy"].get("target_epsilon", row["privacy"].get("epsilon"))


def relative_columns(groups: List[Dict], set_name: str = "test") -> List[str]:
    """Fill ``vs[part] = (relative %, gap closed %)`` of every private non-DP-SGD row against DP-SGD of that part
    at the same budget (the target epsilon both were calibrated to), on mean test WERs:
    relative = (WER_dpsgd - WER) / WER_dpsgd (the published study's definition: positive when lower),
    gap closed = (WER_dpsgd - WER) / (WER_dpsgd - WER_nonprivate). Returns the DP-SGD parts present."""
    def wer(g):
        w = g["wer"].get(set_name)
        return None if w is None else w[0]

    dpsgd = {(g["method"], _budget(g)): wer(g) for g in groups if g["kind"] == "dpsgd" and wer(g) is not None}
    nonprivate = next((wer(g) for g in groups if g["kind"] == "nonprivate" and wer(g) is not None), None)
    parts = sorted({method for method, _ in dpsgd}, key=lambda m: m != "DP-SGD full")
    for g in groups:
        g["vs"] = {}
        if g["kind"] not in ("pate", "other") or wer(g) is None:
            continue
        for part in parts:
            base = dpsgd.get((part, _budget(g)))
            if not base:
                continue
            gap = None
            if nonprivate is not None and base != nonprivate:
                gap = 100 * (base - wer(g)) / (base - nonprivate)
            g["vs"][part] = (100 * (base - wer(g)) / base, gap)
    return parts
