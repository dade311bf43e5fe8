"""Recipe stage 4: PATE noisy ensemble labelling of public untranscribed speech.

    python -m espnet_pate.bin.pate_label --config conf/pate.yaml --teachers exp/teachers_head_k40 \\
        --data data/public_unlabeled --out exp/pate_head_k40 --public-model exp/public_only \\
        --ledger exp/privacy_ledger.jsonl --ledger-config conf/privacy.yaml \\
        (--partition-manifest data/sensitive_speaker_k40/manifest.json | --unit speaker) \\
        [--runs NAME ...] [--name-suffix _diff] [--repeats N] [--seed N] [--device cpu]
    python -m espnet_pate.bin.pate_label --survey N [--shadow] --teachers DIR --data DIR --out DIR ...

For every run of the configuration it writes OUT/<run>/text (pseudo-transcripts of the labelled utterances),
OUT/<run>/privacy_report.{json,md}, OUT/<run>/privacy.json (with ``public_data``, the set labelled), and records the release in the ledger of the
sensitive data set before the text is written (see espnet_pate.ensemble.pate_labeling). A rerun reuses recorded
releases and spends nothing. ``--seed`` fixes the noise for a reproducible experiment: the reports then say NOT FOR
RELEASE. ``--survey`` measures the teachers' agreement without noise and releases nothing: with ``--shadow``
teachers (trained on public data) it is public and sizes conf/pate.yaml; with the real teachers it goes to
OUT/operator_diagnostics/ (statistics of sensitive data, for the experimenter only).
Exit status: 0 done; 2 bad configuration or inputs; 3 a release would exceed the ledger's budget.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from espnet_pate.ensemble.pate_labeling import ConfigError, Stage4Inputs, run_stage4
from espnet_pate.ensemble.teachers import teacher_dirs_in
from espnet_pate.privacy.ledger import BudgetExceededError, PrivacyLedger, read_budget_config
from espnet_pate.privacy.units import PRIVACY_UNITS


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m espnet_pate.bin.pate_label",
                                description="PATE stage 4: noisy ensemble pseudo-labels with a privacy report.")
    p.add_argument("--config", help="conf/pate.yaml: one entry per run (not for --survey)")
    p.add_argument("--teachers", required=True, nargs="+",
                   help="a directory holding teacher_0..teacher_{K-1}, or the teacher directories themselves")
    p.add_argument("--data", required=True, help="Kaldi directory of the public untranscribed speech "
                   "(only wav.scp is read for labelling; text, if present, only to score the labels)")
    p.add_argument("--out", required=True, help="output directory (OUT/<run>/...)")
    p.add_argument("--ledger", help="the ledger of the sensitive data set (exp/privacy_ledger.jsonl)")
    p.add_argument("--ledger-config", help="its budget and delta (conf/privacy.yaml)")
    p.add_argument("--public-model", help="the public pretrained model (utterance-level candidates)")
    p.add_argument("--partition-manifest", help="manifest.json of the teachers' partition (gives the privacy unit)")
    p.add_argument("--unit", choices=PRIVACY_UNITS, help="privacy unit, when no manifest is given")
    p.add_argument("--runs", nargs="+", help="run only these entries of the configuration")
    p.add_argument("--name-suffix", default="", metavar="S",
                   help="append S to every release's name (and to the survey's file): one public set's releases "
                        "beside another's, e.g. _diff for public_unlabeled_diff")
    p.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="N releases of every run, each with fresh noise and paid for: <run>, <run>_seed2 .. "
                        "<run>_seed<N> (default 1)")
    p.add_argument("--seed", type=int, help="fix the noise (reproducible experiment, NOT FOR RELEASE)")
    p.add_argument("--survey", type=int, metavar="N",
                   help="instead of labelling: noise-free agreement of the teachers on N public utterances (token, "
                        "utterance and plurality level). Spends and releases nothing")
    p.add_argument("--withheld-words", metavar="FILE",
                   help="with --survey: also the agreement on public utterances whose true transcript (DATA/text, "
                        "evaluation only) holds a word of FILE, and on as many without, shortest first")
    p.add_argument("--withheld-utts", type=int, default=120, metavar="N",
                   help="utterances of each kind for --withheld-words (default 120)")
    p.add_argument("--plan-survey", metavar="JSON",
                   help="the shadow teachers' survey (OUT/agreement_survey.json of a --survey --shadow run) that "
                        "plurality entries with queries: auto are planned from")
    p.add_argument("--shadow", action="store_true",
                   help="the teachers are shadow teachers trained on public data: the survey is public "
                        "(OUT/agreement_survey.json); without it, it is an operator diagnostic of sensitive data "
                        "(OUT/operator_diagnostics/agreement_survey.json)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--log-level", default="INFO")
    return p


def _unit(args, num_teachers: int) -> str:
    if args.partition_manifest is None:
        if args.unit is None:
            raise ConfigError("give --partition-manifest (preferred) or --unit")
        return args.unit
    manifest = json.loads(Path(args.partition_manifest).read_text())
    unit = manifest["unit"]
    if args.unit is not None and args.unit != unit:
        raise ConfigError(f"--unit {args.unit} contradicts {args.partition_manifest} (unit {unit})")
    if int(manifest["num_shards"]) != num_teachers:
        raise ConfigError(f"{args.partition_manifest} has {manifest['num_shards']} shards but there are "
                          f"{num_teachers} teachers: one teacher per shard is what the privacy argument needs")
    return unit


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    if not args.survey and None in (args.config, args.ledger, args.ledger_config):
        parser.error("--config, --ledger and --ledger-config are required (except with --survey)")
    if args.shadow and not args.survey:
        parser.error("--shadow applies to --survey")
    logging.basicConfig(level=args.log_level, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    try:
        if len(args.teachers) == 1 and not (Path(args.teachers[0]) / "config.yaml").exists():
            teachers = teacher_dirs_in(args.teachers[0])
        else:
            teachers = [Path(t) for t in args.teachers]
        inputs = Stage4Inputs(teacher_dirs=teachers, data_dir=Path(args.data), out_dir=Path(args.out),
                              unit=_unit(args, len(teachers)),
                              public_model=Path(args.public_model) if args.public_model else None,
                              device=args.device,
                              command="python -m espnet_pate.bin.pate_label "
                                      + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))
        if args.survey:
            from espnet_pate.ensemble.pate_labeling import agreement_survey

            words = Path(args.withheld_words).read_text().split() if args.withheld_words else None
            survey = agreement_survey(inputs, args.survey, shadow=args.shadow, withheld_words=words,
                                      withheld_utts=args.withheld_utts)
            where = Path(args.out) if args.shadow else Path(args.out) / "operator_diagnostics"
            where.mkdir(parents=True, exist_ok=True)
            (where / f"agreement_survey{args.name_suffix}.json").write_text(json.dumps(survey, indent=1) + "\n")
            print(json.dumps(survey))
            return 0
        eps_budget, delta = read_budget_config(args.ledger_config)
        ledger = PrivacyLedger(args.ledger, eps_budget=eps_budget, delta=delta)
        survey = json.loads(Path(args.plan_survey).read_text()) if args.plan_survey else None
        reports = run_stage4(args.config, inputs, ledger, only=args.runs, seed=args.seed, plan_survey=survey,
                             name_suffix=args.name_suffix, repeats=args.repeats)
    except BudgetExceededError as e:
        print(f"pate_label: refused: {e}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as e:  # ConfigError, a ledger mismatch, a bad budget file
        print(f"pate_label: error: {e}", file=sys.stderr)
        return 2
    for r in reports:
        wer = "-" if r["pseudo_label_wer"] is None else f"{r['pseudo_label_wer']:.2f}%"
        c = r["claim"]
        print(f"{r['name']}: {r['run_status']}; released ({c['epsilon']:.4g}, {c['delta']:g})-DP, unit {c['unit']}; "
              f"{r['queries']} queries; labelled {r['utterances']['written']}/{r['utterances']['total']}; "
              f"pseudo-label WER {wer}; -> {r['text']}")
    print(f"ledger {ledger.path}: everything released from this sensitive set together: eps "
          f"{ledger.spent()[0]:.4g} of {ledger.eps_budget:g} at delta {ledger.delta:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
