"""The privacy card of a released system: what a model-zoo pack says about the data it was trained on.

``privacy_card(system_dir, config, ledger_path)`` builds it from the system's ``privacy.json`` (read through
``read_privacy_info`` only) and, for a model trained on sensitive data through a mechanism, from the one ledger of
that sensitive set: mechanism, epsilon, delta, unit, accountant, whether the figure is data-dependent, the composed
cost of everything released from the set so far (the ledger's total), the data sets, the WER of stage 7's
decodings, and the training command. ``card_markdown`` renders it as the pack's README.

Refused (``PackRefused``): a system without privacy.json, a teacher, a mechanism this project does not know, a
private mechanism without a finite epsilon or with a data-dependent one, a fixed noise seed (not for release), a
private system that its ledger does not record (its cost would be missing from the total), a data-dependent or
infinite ledger total. A system without a privacy guarantee (the non-private fine-tune, DP-SGD without Poisson
sampling) is refused unless ``allow_nonprivate``; its card then says so first.

The card never carries the ledger's release ids or input digests: they are functions of the sensitive data.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional

from espnet_pate.privacy.digests import file_sha256
from espnet_pate.privacy.ledger import LedgerMissingError, PrivacyLedger
from espnet_pate.privacy.units import PRIVACY_UNITS
from espnet_pate.report.privacy_json import PRIVACY_FILE, PUBLIC_MECHANISMS, read_privacy_info

CARD_FILE = "privacy_card.json"
NO_GUARANTEE = "NO PRIVACY GUARANTEE"

__all__ = ["CARD_FILE", "NO_GUARANTEE", "PackRefused", "card_json", "card_markdown", "privacy_card"]


class PackRefused(ValueError):
    """The system may not be released as it is; the message says why."""


def _is_private_mechanism(mechanism: str) -> bool:
    return mechanism == "dpsgd" or mechanism.startswith("PATE ")


def _number(info: Dict, key: str, where: Path) -> float:
    value = info.get(key)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PackRefused(f"{where}: {key} is {value!r}, not a number") from None


def release_kind(info: Dict, system_dir: Path, allow_nonprivate: bool = False) -> str:
    """'public', 'private' or 'nonprivate' for a releasable claim; PackRefused otherwise."""
    where = system_dir / PRIVACY_FILE
    if not info:
        raise PackRefused(f"{where}: missing. A model without a privacy claim (a teacher, or a model that was not "
                          "released) is not packed.")
    mechanism = str(info.get("mechanism", ""))
    if mechanism == "teacher":
        raise PackRefused(f"{where}: mechanism teacher. A teacher is trained on its shard of the sensitive data "
                          "without any mechanism: it is never released.")
    if info.get("not_for_release"):
        raise PackRefused(f"{where}: not_for_release (a fixed noise seed makes the noise reproducible).")
    if mechanism in PUBLIC_MECHANISMS:
        if _number(info, "epsilon", where) != 0:
            raise PackRefused(f"{where}: mechanism {mechanism} with epsilon {info.get('epsilon')} (expected 0)")
        return "public"
    if mechanism == "dpsgd_shuffle" or (mechanism == "none" and math.isinf(_number(info, "epsilon", where))):
        if not allow_nonprivate:
            raise PackRefused(f"{where}: mechanism {mechanism}: trained on sensitive data with no privacy guarantee. "
                              "Pass --allow-nonprivate to pack it anyway; its card then says so.")
        return "nonprivate"
    if not _is_private_mechanism(mechanism):
        raise PackRefused(f"{where}: mechanism {mechanism or '(none)'!s} is not a privacy mechanism of this project "
                          "(dpsgd, PATE ..., public_only): nothing says what the model reveals.")
    epsilon = _number(info, "epsilon", where)
    delta = _number(info, "delta", where)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise PackRefused(f"{where}: mechanism {mechanism} claims no finite epsilon ({info.get('epsilon')})")
    if not 0 <= delta < 1:
        raise PackRefused(f"{where}: delta {delta:g} is not in [0, 1)")
    if info.get("data_dependent") is not False:
        raise PackRefused(f"{where}: data_dependent is {info.get('data_dependent')!r}: a data-dependent epsilon "
                          "depends on the sensitive data and cannot be published (it must be false)")
    if info.get("unit") not in PRIVACY_UNITS:
        raise PackRefused(f"{where}: unit {info.get('unit')!r} (expected one of {PRIVACY_UNITS})")
    if not info.get("accountant"):
        raise PackRefused(f"{where}: no accountant named")
    return "private"


def released_together(ledger_path: os.PathLike | str, info: Dict, model_sha256: str, system_dir: Path) -> Dict:
    """The ledger's composed total, after checking that it records this system's release."""
    try:
        ledger = PrivacyLedger(str(ledger_path), create=False)
    except LedgerMissingError as err:
        raise PackRefused(f"{system_dir} was trained on sensitive data: its card needs the ledger of that set "
                          f"({err})") from None
    releases = ledger.releases
    recorded = any(r.release_id == info.get("release_id") or r.outputs == f"sha256:{model_sha256}"
                   for r in releases)
    if not recorded:
        raise PackRefused(f"{system_dir}: its release is not recorded in {ledger_path}, so that ledger's total "
                          "does not include it. Give the ledger of the sensitive set it was trained on (--ledger).")
    summary = ledger.summary()
    if summary["data_dependent"]:
        raise PackRefused(f"{ledger_path}: holds data-dependent releases, so its total cannot be published")
    if not math.isfinite(summary.get("eps", math.inf)):
        raise PackRefused(f"{ledger_path}: the composed total has no finite epsilon at delta {ledger.delta}")
    return {"releases": summary["releases"], "epsilon": summary["eps"], "delta": summary["delta"],
            "eps_budget": summary["eps_budget"], "conversion": summary["conversion"], "data_dependent": False,
            "last_release": max(r.time for r in releases)}


def data_sets(config: Dict) -> Dict[str, List[str]]:
    """Names of the data directories the model was trained and validated on, and of its initial model."""
    def dirs(entries):
        return sorted({Path(str(e[0] if isinstance(e, (list, tuple)) else e).split(",")[0]).parent.name
                       for e in entries or []})

    return {"train": dirs(config.get("train_data_path_and_name_and_type")),
            "valid": dirs(config.get("valid_data_path_and_name_and_type")),
            "init": sorted({Path(str(p).split(":")[0]).parent.name for p in config.get("init_param") or []})}


def decode_scores(system_dir: Path, model_file: Path) -> Dict[str, Dict[str, Dict]]:
    """{decode config: {set: WER figures}} from stage 7's score.json files whose decoding is newer than the model."""
    scores: Dict[str, Dict[str, Dict]] = {}
    for score in sorted(system_dir.glob("decode_*/*/score.json")):
        hyp = score.parent / "text"
        if not hyp.exists() or hyp.stat().st_mtime < model_file.stat().st_mtime:
            continue  # decoded by an older model
        try:
            s = json.loads(score.read_text())
            figures = {k: s[k] for k in ("wer", "substitutions", "deletions", "insertions", "ref_words", "utterances")}
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{score}: not a score file of decode_and_score ({err})") from None
        if isinstance(s.get("keywords"), dict) and "recall" in s["keywords"]:
            figures["keyword_recall"] = s["keywords"]["recall"]
        scores.setdefault(score.parent.parent.name[len("decode_"):], {})[score.parent.name] = figures
    return scores


def training_command(system_dir: Path) -> Optional[str]:
    """The command the job runner logged first in train.log (utils/run_local.sh's "# COMMAND" line)."""
    log = system_dir / "train.log"
    if not log.exists():
        return None
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("# ") and not line.startswith(("# Started at", "# Accounting", "# Ended")):
                return line[2:].strip()
    return None


def privacy_card(system_dir: os.PathLike | str, config: Dict, ledger_path: Optional[os.PathLike | str] = None,
                 model_file: str = "valid.loss.ave.pth", allow_nonprivate: bool = False,
                 pack_command: Optional[str] = None) -> Dict:
    """The card of ``system_dir``, trained with ``config`` (its config.yaml) into ``model_file``; PackRefused when
    it may not be released (see the module docstring)."""
    system_dir = Path(system_dir)
    info = read_privacy_info(system_dir)
    kind = release_kind(info, system_dir, allow_nonprivate)
    model = system_dir / model_file
    model_sha256 = file_sha256(model)
    card = {"system": system_dir.name, "privacy_guarantee": kind != "nonprivate",
            "trained_on_sensitive_data": kind != "public", "mechanism": info["mechanism"],
            "epsilon": info.get("epsilon"), "delta": info.get("delta"), "unit": info.get("unit"),
            "accountant": info.get("accountant"), "data_dependent": False if kind != "nonprivate" else None}
    for key in ("target_epsilon", "pseudo_label_wer", "labelled_fraction", "note"):
        if info.get(key) is not None:
            card[key] = info[key]
    if kind == "nonprivate":
        card["warning"] = (f"{NO_GUARANTEE}: this model was trained on sensitive data without a proven privacy "
                           f"guarantee (mechanism {info['mechanism']}); it may reveal that data.")
    if kind == "private":
        if ledger_path is None:
            raise PackRefused(f"{system_dir} was trained on sensitive data: give the ledger of that set (--ledger)")
        card["released_together"] = released_together(ledger_path, info, model_sha256, system_dir)
    card.update(data=data_sets(config), wer=decode_scores(system_dir, model),
                model_file=model_file, model_sha256=model_sha256, command=training_command(system_dir),
                pack_command=pack_command)
    return card


def card_json(card: Dict) -> str:
    """Strict JSON (an infinite epsilon is written "inf": JSON has no infinity)."""
    def strict(v):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {k: strict(x) for k, x in v.items()}
        if isinstance(v, list):
            return [strict(x) for x in v]
        return v

    return json.dumps(strict(card), indent=1, allow_nan=False) + "\n"


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "inf" if math.isinf(x) else f"{x:.4g}"
    return str(x)


def card_markdown(card: Dict, zip_name: str = "model.zip") -> str:
    """The pack's README: how to load it, then the privacy card."""
    lines = [f"# {card['system']}", ""]
    if not card["privacy_guarantee"]:
        lines += [f"**{card['warning']}**", ""]
    lines += ["An ESPnet RNN-T (transducer) model packed by espnet-pate with `espnet2.bin.pack`:", "", "```python",
              "from espnet_model_zoo.downloader import ModelDownloader",
              "from espnet2.bin.asr_transducer_inference import Speech2Text",
              f'speech2text = Speech2Text(**ModelDownloader().download_and_unpack("{zip_name}"))', "```", "",
              "## Privacy card", "", f"Machine-readable: `{CARD_FILE}`.", "", "| | |", "|---|---|"]
    if not card["trained_on_sensitive_data"]:
        lines.append("| trained on | public data only: nothing about the sensitive data is in it |")
    lines += [f"| mechanism | {card['mechanism']} |", f"| epsilon | {_fmt(card['epsilon'])} |",
              f"| delta | {_fmt(card['delta'])} |", f"| privacy unit | {_fmt(card['unit'])} |",
              f"| accountant | {_fmt(card['accountant'])} |",
              f"| data-dependent | {'no' if card['data_dependent'] is False else '-'} |"]
    if "target_epsilon" in card:
        lines.append(f"| target epsilon | {_fmt(card['target_epsilon'])} |")
    together = card.get("released_together")
    if together:
        lines.append(f"| everything released from the same sensitive set | epsilon {_fmt(together['epsilon'])} at "
                     f"delta {_fmt(together['delta'])}, releases composed: {together['releases']} "
                     f"({together['conversion']} RDP conversion; budget {_fmt(together['eps_budget'])}; last "
                     f"release {together['last_release']}) |")
    for key, label in (("pseudo_label_wer", "pseudo-label WER %"), ("labelled_fraction", "labelled fraction")):
        if key in card:
            lines.append(f"| {label} | {_fmt(card[key])} |")
    data = card["data"]
    lines += [f"| training data | {', '.join(data['train']) or '-'} |",
              f"| validation data | {', '.join(data['valid']) or '-'} |",
              f"| initialised from | {', '.join(data['init']) or '-'} |"]
    if "note" in card:
        lines.append(f"| note | {card['note']} |")
    lines += ["", "An epsilon here is an upper bound. The composed figure is the cost of everything released from the "
              "sensitive set when this pack was made; later releases add to it.", ""]
    if card["wer"]:
        lines += ["### WER", "", "| decoding | set | WER % | utterances |", "|---|---|---|---|"]
        for config, sets in card["wer"].items():
            lines += [f"| {config} | {name} | {s['wer']:.2f} | {s['utterances']} |" for name, s in sets.items()]
        lines.append("")
    lines += ["### Commands", "", "Training:", "", "```sh", card["command"] or "(no train.log)", "```", "",
              "Packing:", "", "```sh", card["pack_command"] or "-", "```", ""]
    return "\n".join(lines)
