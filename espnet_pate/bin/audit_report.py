"""The audit report (stage 8): <audit-dir>/RESULTS.md, and the audit section of the operator diagnostics beside the
top-level results table (RESULTS_operator_diagnostics.md, replaced in place; stage 7 keeps it when it rewrites the
file). Audits are operator diagnostics: never in RESULTS.md itself.

    python -m espnet_pate.bin.audit_report --audit-dir exp/audit --results RESULTS.md
"""
import argparse
from pathlib import Path

from espnet_pate.report.audit_table import audit_md, replace_audit_section
from espnet_pate.report.results_table import diagnostics_path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audit-dir", required=True)
    p.add_argument("--results", help="the top-level RESULTS.md: its operator diagnostics file is updated (left alone "
                   "when it does not exist)")
    a = p.parse_args(argv)
    section = audit_md(a.audit_dir, heading="# Privacy audits (operator diagnostics, not released)")
    if section is None:
        raise SystemExit(f"{a.audit_dir}: no audit results (membership/*.json, inversion/inversion.json)")
    out = Path(a.audit_dir) / "RESULTS.md"
    out.write_text(section)
    print(section)
    if a.results and diagnostics_path(Path(a.results)).exists():
        results = diagnostics_path(Path(a.results))
        results.write_text(replace_audit_section(results.read_text(), audit_md(a.audit_dir)))
        print(f"updated the audit section of {results}")


if __name__ == "__main__":
    main()
