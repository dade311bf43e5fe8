"""Model inversion against every released model (stage 8): reconstructions of sensitive training utterances from
their transcripts, closeness to the originals (log-mel correlation, mel-cepstral distortion), speaker
identification by an evaluation-only classifier, and the figure. Operator diagnostics, never released.

    python -m espnet_pate.bin.audit_inversion --exp-root exp --members data/sensitive --out exp/audit/inversion \
        --config conf/audit_inversion.yaml
"""
import argparse
import json
import time
from pathlib import Path

import yaml

from espnet_pate.attacks.figure import inversion_figure
from espnet_pate.attacks.inversion import InversionConfig
from espnet_pate.attacks.inversion_audit import audit_inversion
from espnet_pate.attacks.systems import audited_systems, kind_of
from espnet_pate.report.privacy_json import read_privacy_info

FIGURE = "inversion.png"


def figure_columns(systems, claims):
    """original, then the non-private model, the first DP-SGD model, the first PATE student, public-only."""
    cols = ["original"]
    for kind in ("non-private", "DP-SGD", "PATE student", "public-only"):
        cols += [s.name for s in systems if kind_of(claims[s.name]) == kind][:1]
    return cols


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp-root", required=True)
    p.add_argument("--systems", nargs="*", help="attack these model directories instead of every released one")
    p.add_argument("--members", required=True, help="the sensitive training set whose utterances are inverted")
    p.add_argument("--out", required=True)
    p.add_argument("--targets", type=int, default=4, help="utterances inverted (one per speaker)")
    p.add_argument("--figure-rows", type=int, default=2)
    for field, value in InversionConfig().as_dict().items():
        p.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--config", help="YAML of these options' defaults (conf/audit_inversion*.yaml); the command "
                   "line wins")
    pre, _ = p.parse_known_args(argv)
    if pre.config:
        defaults = yaml.safe_load(Path(pre.config).read_text()) or {}
        unknown = set(defaults) - {a.dest for a in p._actions}
        if unknown:
            p.error(f"{pre.config}: unknown options {sorted(unknown)}")
        p.set_defaults(**defaults)
    a = p.parse_args(argv)
    cfg = InversionConfig(**{f: getattr(a, f) for f in InversionConfig().as_dict()})
    systems = [Path(s) for s in a.systems] if a.systems else audited_systems(a.exp_root)
    claims = {s.name: read_privacy_info(s) for s in systems}
    start = time.time()
    record, arrays = audit_inversion({s.name: s for s in systems}, a.members, a.targets, cfg)
    out = Path(a.out)
    cols = figure_columns(systems, claims)
    titles = {c: f"{c} ({kind_of(claims[c])})" for c in cols[1:]}
    record["figure"] = str(inversion_figure(arrays, cols, record["targets"][: a.figure_rows], out / FIGURE, titles))
    for name, m in record["models"].items():
        claim = claims[name]
        m["kind"], m["epsilon"], m["unit"] = kind_of(claim), claim.get("epsilon"), claim.get("unit")
    record["seconds"] = round(time.time() - start, 1)
    (out / "inversion.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"inversion: {len(systems)} models x {len(record['targets'])} utterances in {record['seconds']} s; "
          f"figure {record['figure']}")


if __name__ == "__main__":
    main()
