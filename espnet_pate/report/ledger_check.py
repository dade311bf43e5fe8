"""Check that every epsilon and delta in RESULTS.md is what the privacy ledger recorded for that system's release,
and that the composed total it states is the ledger's.

Read from the written file, not from the rows that made it: what is checked is what a reader sees. A row's system
is ``exp/<system>`` and its seeds ``exp/<system>_seed<N>``. Each one's release is found in the ledger by the
``release_id`` of its privacy.json (PATE: stage 4 writes it, the student inherits it) or else by the SHA-256 of its
``model_file`` (valid.loss.ave.pth: DP-SGD records it as the release's output). The ledger's own record of the claim
(``details``: ``eps``/``delta`` for PATE, ``epsilon_own``/``delta_own`` for DP-SGD) must read the same in the
table's format. Epsilon 0 belongs to public-only models and infinity to models without a mechanism: neither is in
the ledger.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Dict, List, Optional

from espnet_pate.privacy.digests import file_sha256
from espnet_pate.privacy.ledger import PrivacyLedger, Release
from espnet_pate.report.privacy_json import PUBLIC_MECHANISMS, read_privacy_info
from espnet_pate.report.results_table import fmt_eps

__all__ = ["ResultsLedgerMismatch", "check_results_against_ledger", "ledger_release", "released_table"]

TOTAL = re.compile(r"\((\d+) releases in the ledger\): epsilon (\S+) at delta (\S+?)\.\s")


class ResultsLedgerMismatch(ValueError):
    """RESULTS.md states a privacy figure that the ledger does not hold."""


def released_table(text: str) -> List[Dict[str, str]]:
    """The rows of the first table of RESULTS.md (the released systems) as {column: cell}."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("| system |")), None)
    if start is None:
        raise ResultsLedgerMismatch("no released table (a line starting '| system |') in RESULTS.md")
    head = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(head, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def ledger_release(releases: List[Release], system_dir: Path, privacy: Dict, model_file: str) -> Optional[Release]:
    rid = privacy.get("release_id")
    if rid:
        return next((r for r in releases if r.release_id == rid), None)
    model = Path(system_dir) / model_file
    if not model.exists():
        return None
    digest = f"sha256:{file_sha256(model)}"
    return next((r for r in releases if r.outputs == digest), None)


def _expected(system_dir: Path, releases: List[Release], model_file: str) -> tuple:
    """(epsilon, delta) as the table must show them for this system directory."""
    privacy = read_privacy_info(system_dir)
    eps = privacy.get("epsilon")
    if eps is not None and float(eps) == 0 and privacy.get("mechanism") in PUBLIC_MECHANISMS:
        return fmt_eps(0), fmt_eps(privacy.get("delta"))
    if eps is not None and math.isinf(float(eps)) and privacy.get("mechanism") == "none":
        return "inf", fmt_eps(privacy.get("delta"))
    release = ledger_release(releases, system_dir, privacy, model_file)
    if release is None:
        raise ResultsLedgerMismatch(f"{system_dir}: epsilon {fmt_eps(eps)} but its release is not in the ledger")
    d = release.details
    return fmt_eps(d.get("eps", d.get("epsilon_own"))), fmt_eps(d.get("delta", d.get("delta_own")))


def check_results_against_ledger(results: Path, exp_root: Path, ledger_path: Path, model_file: str) -> int:
    """Raise ResultsLedgerMismatch on the first figure of ``results`` the ledger does not hold; returns the number of
    system directories checked."""
    ledger = PrivacyLedger(str(ledger_path), create=False)
    releases, text = ledger.releases, Path(results).read_text()
    checked = 0
    for row in released_table(text):
        name = row["system"]
        dirs = [d for d in [Path(exp_root) / name, *sorted(Path(exp_root).glob(f"{name}_seed*"))] if d.is_dir()]
        if not dirs:
            raise ResultsLedgerMismatch(f"{results}: system {name} has no directory under {exp_root}")
        for d in dirs:
            eps, delta = _expected(d, releases, model_file)
            if (row["epsilon"], row["delta"]) != (eps, delta):
                raise ResultsLedgerMismatch(f"{results}: {name} shows epsilon {row['epsilon']} at delta "
                                            f"{row['delta']}; the ledger {ledger_path} holds {eps} at {delta} for {d}")
            checked += 1
    if releases:
        total, m = ledger.summary(), TOTAL.search(text)
        want = (str(total["releases"]), fmt_eps(total["eps"]), fmt_eps(total["delta"]))
        if m is None or m.groups() != want:
            raise ResultsLedgerMismatch(f"{results}: the composed total reads {m.groups() if m else 'nothing'}; the "
                                        f"ledger {ledger_path} composes {want} (releases, epsilon, delta)")
    return checked
