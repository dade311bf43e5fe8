"""Stage 7's writer: RESULTS.md, ``RESULTS_operator_diagnostics.md`` and the plots beside it, from the experiment
directories (``results_rows`` -> ``results_table``, ``results_plots``), then the check of every epsilon it shows
against the privacy ledger (``ledger_check``): a mismatch stops stage 7.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from espnet_pate.privacy.ledger import PrivacyLedger
from espnet_pate.report.audit_table import audit_md
from espnet_pate.report.ledger_check import ResultsLedgerMismatch, check_results_against_ledger
from espnet_pate.report.results_plots import write_plots
from espnet_pate.report.results_rows import PRIVATE_KINDS, collect_rows, group_rows, relative_columns
from espnet_pate.report.results_table import diagnostics_path, operator_md, results_md, survey_rows

__all__ = ["write_tables"]


def write_tables(exp_root: Optional[Path], system_dirs: Sequence[Path], decode_dir: str, sets: Sequence[str],
                 results: Path, command: str, ledger: Optional[str], model_file: str) -> str:
    """Write RESULTS.md, its operator diagnostics and its plots from the experiment directories; then every epsilon
    of RESULTS.md is checked against the ledger (ResultsLedgerMismatch on any difference). Returns RESULTS.md's text."""
    groups = group_rows(collect_rows(exp_root, system_dirs, decode_dir, sets))
    parts = relative_columns(groups)
    total = None
    if ledger and Path(ledger).exists():
        total = PrivacyLedger(ledger, create=False).summary()
    elif any(g["kind"] in PRIVATE_KINDS for g in groups):
        raise ResultsLedgerMismatch(f"private systems to report but no privacy ledger ({ledger}): their epsilons "
                                    "cannot be checked against it")
    results.write_text(results_md(groups, parts, command, total))
    root = exp_root or Path(system_dirs[0]).parent
    # stage 8's audits, when they exist, are operator diagnostics: in their own file with the teachers'
    audit = audit_md(root / "audit")
    diagnostics_path(results).write_text(operator_md(groups, survey_rows(root), audit, command))
    write_plots(groups, results)
    if total is not None:
        n = check_results_against_ledger(results, root, Path(ledger), model_file)
        logging.info("%s: the epsilons of %d systems match the ledger %s", results, n, ledger)
    return results.read_text()
