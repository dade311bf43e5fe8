"""The privacy ledger of a sensitive data set: create it with its budget, show its total, record a DP-SGD model.

    python -m espnet_pate.bin.privacy_ledger init --ledger exp/privacy_ledger.jsonl --config conf/privacy.yaml
    python -m espnet_pate.bin.privacy_ledger init --ledger exp/privacy_ledger.jsonl --config sweep.yaml --set-budget
    python -m espnet_pate.bin.privacy_ledger show --ledger exp/privacy_ledger.jsonl
    python -m espnet_pate.bin.privacy_ledger record-dpsgd --ledger exp/privacy_ledger.jsonl exp/dpsgd_eps8

init creates the ledger with the config's eps_budget and delta, or checks that an existing one has them (exit 2
when it holds others). With --set-budget, an existing ledger of the same delta takes the config's eps_budget as a
recorded budget change (a warning on stderr says old -> new; refused below what is spent); the delta never changes.
show prints its releases and the composed total, budget changes included, as JSON (operator output: the ledger
holds data-dependent figures). record-dpsgd records finished DP-SGD models (nothing twice; exit 3 when a
model does not fit the budget, nothing recorded).
"""
import argparse
import json
import sys

from espnet_pate.dpsgd.release import record_dpsgd_model
from espnet_pate.privacy.ledger import (
    BudgetExceededError,
    LedgerMismatchError,
    PrivacyLedger,
    ReleaseConflictError,
    read_budget_config,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create the ledger, or check its budget")
    init.add_argument("--ledger", required=True)
    init.add_argument("--config", required=True, help="YAML with eps_budget and delta (conf/privacy.yaml)")
    init.add_argument("--set-budget", action="store_true",
                      help="record the config's eps_budget as the existing ledger's new budget")
    show = sub.add_parser("show", help="releases and the composed total")
    show.add_argument("--ledger", required=True)
    rec = sub.add_parser("record-dpsgd", help="record finished DP-SGD models (their dp_report.json and model)")
    rec.add_argument("--ledger", required=True)
    rec.add_argument("system_dirs", nargs="+")
    a = p.parse_args(argv)
    try:
        if a.command == "init":
            eps_budget, delta = read_budget_config(a.config)
            try:
                ledger = PrivacyLedger(a.ledger, eps_budget=eps_budget, delta=delta)
            except LedgerMismatchError:
                if not a.set_budget:
                    raise
                ledger = PrivacyLedger(a.ledger, delta=delta, create=False)  # another delta is still refused
                change = ledger.set_budget(eps_budget, f"init --set-budget --config {a.config}")
                if change is not None:
                    old = "none" if change.previous is None else f"{change.previous:g}"
                    print(f"warning: {a.ledger}: budget changed eps={old} -> eps={change.eps_budget:g} at "
                          f"delta={delta:g} (recorded in the ledger)", file=sys.stderr)
            print(json.dumps(ledger.summary()))
        elif a.command == "show":
            ledger = PrivacyLedger(a.ledger, create=False)
            for r in ledger.releases:
                print(json.dumps({"release_id": r.release_id, "what": r.what, "mechanism": r.mechanism,
                                  "queries": r.queries, "data_dependent": r.data_dependent,
                                  "eps_alone": ledger.total([r]).eps, "eps_extra": r.eps_extra,
                                  "delta_extra": r.delta_extra, "time": r.time}))
            print(json.dumps(ledger.summary()))
        else:
            for d in a.system_dirs:
                rel, new = record_dpsgd_model(a.ledger, d)
                print(f"{d}: {'recorded' if new else 'already recorded'} ({rel.what})")
            print(json.dumps(PrivacyLedger(a.ledger, create=False).summary()))
    except (ValueError, FileNotFoundError, LedgerMismatchError, ReleaseConflictError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BudgetExceededError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
