"""Stage 7: decode dev/test with ESPnet's stock Speech2Text for every system, score WER with jiwer, and write
`exp/<system>/RESULTS.md` and the top-level results table.

    python -m espnet_pate.bin.decode_and_score --decode-config conf/decode_transducer.yaml --data-dir data \
        --sets dev test --results RESULTS.md --nj 2 exp/public_only exp/teachers_head_k40/teacher_0 ...

A system's decoding of a set is kept in `exp/<system>/decode_<config>/<set>/text` and reused while it is newer
than the model, so a rerun only decodes what changed; scores (`score.json`) are recomputed from it. With
`--keywords FILE` the table also gives the recall of those words (the default corpus's withheld words).
"""
import argparse
import json
import logging
import multiprocessing
import os
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Optional, Sequence

from espnet_pate.asr.decode import MODEL_FILE, decode_data_dir, load_speech2text
from espnet_pate.data.kaldi_dir import read_table, write_table
from espnet_pate.report.results import system_results_md
from espnet_pate.report.results_writer import write_tables
from espnet_pate.report.scoring import keyword_recall, score_wer


def _log_setup():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")


def score_system(system_dir: Path, decode_config: Path, data_dir: Path, sets, device: str,
                 keywords: Optional[Sequence[str]] = None):
    """Decode each set unless its hypotheses are newer than the model, then score them (cheap: always redone)."""
    model = system_dir / MODEL_FILE
    speech2text = None
    scores = {}
    for name in sets:
        out = system_dir / f"decode_{decode_config.stem}" / name
        hyp_file = out / "text"
        if hyp_file.exists() and hyp_file.stat().st_mtime >= model.stat().st_mtime:
            hyps = read_table(hyp_file, allow_empty_value=True)
        else:
            if speech2text is None:
                speech2text = load_speech2text(system_dir, decode_config, device=device)
            hyps = decode_data_dir(speech2text, data_dir / name)
            out.mkdir(parents=True, exist_ok=True)
            write_table(out / "text.tmp", hyps.items())
            os.replace(out / "text.tmp", hyp_file)  # a killed decoding leaves no partial text behind
        refs = read_table(data_dir / name / "text", allow_empty_value=True)
        result = score_wer(refs, hyps).as_dict()
        if keywords:
            result["keywords"] = keyword_recall(refs, hyps, keywords).as_dict()
        (out / "score.json").write_text(json.dumps(result, indent=1) + "\n")
        scores[name] = result
        logging.info("%s %s: WER %.2f%%", system_dir, name, result["wer"])
    return scores


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("systems", nargs="+", help="experiment directories holding config.yaml and " + MODEL_FILE)
    p.add_argument("--decode-config", required=True)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--sets", nargs="+", default=["dev", "test"])
    p.add_argument("--results", default="RESULTS.md", help="the top-level table to write")
    p.add_argument("--exp-root", default=None, help="system names are shown relative to this (default: common parent)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--nj", type=int, default=1, help="systems decoded at once (processes)")
    p.add_argument("--keywords", default=None,
                   help="a file of words (one per line) whose recall is reported beside the WER, e.g. the "
                        "default corpus's withheld_words.txt: words only the sensitive data holds")
    p.add_argument("--ledger", default=None,
                   help="the privacy ledger of the sensitive set: the table states what the released set costs "
                        "together")
    a = p.parse_args(argv)
    _log_setup()
    command = " ".join(shlex.quote(x) for x in ["python", "-m", "espnet_pate.bin.decode_and_score",
                                                *(sys.argv[1:] if argv is None else argv)])
    decode_config, data_dir = Path(a.decode_config), Path(a.data_dir)
    keywords = Path(a.keywords).read_text().split() if a.keywords else None
    system_dirs = [Path(system) for system in a.systems]
    args = (repeat(decode_config), repeat(data_dir), repeat(a.sets), repeat(a.device), repeat(keywords))
    if a.nj > 1 and len(system_dirs) > 1:
        # spawn, not fork: each worker starts its own torch (a forked OpenMP runtime can hang)
        with ProcessPoolExecutor(a.nj, mp_context=multiprocessing.get_context("spawn"), initializer=_log_setup) as ex:
            all_scores = list(ex.map(score_system, system_dirs, *args))
    else:
        all_scores = list(map(score_system, system_dirs, *args))
    for system_dir, scores in zip(system_dirs, all_scores):
        name = system_dir.name if a.exp_root is None else str(system_dir.relative_to(a.exp_root))
        (system_dir / "RESULTS.md").write_text(system_results_md(name, scores, command, str(decode_config)))
    print(write_tables(Path(a.exp_root) if a.exp_root else None, system_dirs, f"decode_{decode_config.stem}",
                       a.sets, Path(a.results), command, a.ledger, MODEL_FILE))

if __name__ == "__main__":
    main()
