"""Stage 4, release: the crash-safe protocol that records a release in the ledger before its labels appear.

For one entry, under the ledger's exclusive lock (held from the first check to the last write, so two runs of one
entry cannot both draw, and a release is never published that the ledger has not recorded):

1. The release id is a hash of the entry's settings and inputs (teacher checkpoints, the public wav.scp, the
   public model for utterance-level candidates, the privacy unit, a fixed seed if any).
2. If the ledger holds that id, the recorded labels are reused (``text`` must have the recorded SHA-256); a run
   killed after recording left them in ``OUT/<name>/.pending`` and they are moved into place. Nothing is spent
   or decoded again.
3. Otherwise: the teachers decode with noise (``draw``); labels and cost go to ``.pending`` (fsync-ed); the release
   is recorded in the ledger (refused with ``BudgetExceededError`` if the budget would be exceeded: nothing is
   released, and the pending draw is kept, so a rerun cannot re-roll the noise); then ``text`` is moved into
   place (atomic rename) and the reports are written.

An unrecorded pending draw of *other* settings is never silently replaced: a draw that an operator could have
seen and then re-rolled with new settings would be an unaccounted second look at the votes. It is an error that
says how to go on (rerun with the settings that drew it, which records and pays for it, or delete it by hand).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Mapping, Optional

from espnet_pate.ensemble.pate_plan import RunSettings
from espnet_pate.ensemble.pate_report import report_markdown, write_student_privacy_info
from espnet_pate.privacy.digests import bytes_sha256, file_sha256, make_release_id
from espnet_pate.privacy.ledger import BudgetExceededError, PrivacyLedger

log = logging.getLogger(__name__)

PENDING = ".pending"
REPORT_JSON, REPORT_MD, TEXT = "privacy_report.json", "privacy_report.md", "text"


def kaldi_text_bytes(labels: Mapping[str, str]) -> bytes:
    items = sorted(labels.items(), key=lambda kv: kv[0].encode("utf-8"))
    return "".join(f"{u} {t}\n" for u, t in items).encode("utf-8")


def write_fsync(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_pending(pending: Path, bundle: dict, release_id: str) -> dict:
    pending.mkdir(parents=True, exist_ok=True)
    text = kaldi_text_bytes(bundle["labels"])
    meta = {k: v for k, v in bundle.items() if k != "labels"}
    meta.update(release_id=release_id, text_sha256=bytes_sha256(text), labelled_utterances=len(bundle["labels"]))
    write_fsync(pending / TEXT, text)
    write_fsync(pending / "meta.json", json.dumps(meta, default=float).encode())
    return meta


def load_pending(pending: Path) -> Optional[dict]:
    """The pending bundle's meta if it is complete: its labels in ``.pending/text``, or already moved to
    ``text`` (a run killed after the rename), with the recorded SHA-256."""
    try:
        meta = json.loads((pending / "meta.json").read_text())
        text = pending / TEXT if (pending / TEXT).exists() else pending.parent / TEXT
        text_ok = file_sha256(text) == meta["text_sha256"]
    except (OSError, ValueError, KeyError):
        return None
    return meta if text_ok else None


def release_entry(s: RunSettings, out: Path, ledger: PrivacyLedger, release_inputs: dict, params: dict,
                  draw: Callable[[], dict], finish: Callable[[dict, str, str], dict],
                  annotate: Optional[dict] = None, planned: Optional[tuple] = None) -> dict:
    """One release of entry ``s`` into ``out`` (see the module docstring). ``draw()`` decodes with noise and
    returns the bundle; ``finish(meta, release_id, status)`` writes the reports and returns the report.
    ``annotate``: fields of the report that describe the release without changing it (the public set labelled),
    also added to the report of a release made before they existed. ``planned``: the release's cost
    ``(rdp, eps_extra, delta_extra)`` when its settings fix it (the plurality's fixed queries): a release that cannot
    fit the ledger is refused before the teachers' votes are looked at."""
    out.mkdir(parents=True, exist_ok=True)
    pending = out / PENDING
    what = f"pate_labels/{s.name}"
    release_id = make_release_id(what, s.mechanism, params, release_inputs)
    with ledger.exclusive():
        recorded = ledger.get(release_id)
        if recorded is not None:
            return _reuse(out, release_id, recorded, ledger, finish, annotate or {})
        meta = load_pending(pending)
        if meta is not None and meta["release_id"] != release_id:
            raise RuntimeError(
                f"{pending} holds an unrecorded draw of other settings (release {meta['release_id']}). Drawing again "
                "with new settings would be a second, unaccounted look at the teachers' votes. Rerun with the "
                f"settings that drew it (it is then recorded and paid for), or delete {pending} yourself, knowing "
                "that anyone who saw it has seen an unaccounted release.")
        if meta is None:
            _check_name_is_free(out, release_id)
            if planned is not None:
                fits, total = ledger.check_fits(*planned)
                if not fits:
                    raise BudgetExceededError(
                        f"{s.name}: its cost, fixed by its settings, does not fit {ledger.path} (budget eps="
                        f"{ledger.eps_budget:g} at delta={ledger.delta:g}; with it the total would be eps={total:.4g} "
                        f"or its additive deltas would reach delta): refused before decoding, nothing was drawn")
            shutil.rmtree(pending, ignore_errors=True)  # an incomplete draw: nothing of it was readable
            meta = save_pending(pending, draw(), release_id)
        else:
            log.warning("%s: recording the draw left unrecorded by an interrupted run (%s)", s.name, pending)
        ledger.record(what, s.mechanism, params, meta["rdp"], meta["queries"], release_id=release_id,
                      data_dependent=False, outputs=meta["text_sha256"], eps_extra=meta["eps_extra"],
                      delta_extra=meta["delta_extra"],
                      details={"level": s.level, "unit": meta["unit"], "eps": meta["claim"]["epsilon"],
                               "delta": s.delta, "answered_queries": meta["answered_queries"],
                               "labelled_utterances": meta["labelled_utterances"], "seed_fixed": meta["seed_fixed"]})
        return finalise(out, meta, release_id, "new", finish)


def _check_name_is_free(out: Path, release_id: str) -> None:
    """A run's name names one release: new settings under a used name would replace a recorded release's labels."""
    if (out / REPORT_JSON).exists():
        old = json.loads((out / REPORT_JSON).read_text()).get("release_id")
        if old != release_id:
            raise RuntimeError(
                f"{out} holds release {old}, made with other settings than this run's (release {release_id}); its "
                "labels stay as they are. Give the run with the new settings a name of its own.")


def finalise(out: Path, meta: dict, release_id: str, status: str, finish) -> dict:
    pending = out / PENDING
    if (pending / TEXT).exists():
        os.replace(pending / TEXT, out / TEXT)
    report = finish(meta, release_id, status)
    report["text"], report["text_sha256"] = str(out / TEXT), file_sha256(out / TEXT)
    write_fsync(out / REPORT_JSON, (json.dumps(report, indent=1, sort_keys=True, default=float) + "\n").encode())
    write_fsync(out / REPORT_MD, report_markdown(report).encode())
    write_student_privacy_info(out, report)
    shutil.rmtree(pending, ignore_errors=True)
    return report


def _reuse(out: Path, release_id: str, recorded, ledger: PrivacyLedger, finish, annotate: dict) -> dict:
    pending = out / PENDING
    meta = load_pending(pending)
    if (out / TEXT).exists() and file_sha256(out / TEXT) == recorded.outputs:
        if meta is None and (out / REPORT_JSON).exists():
            report = json.loads((out / REPORT_JSON).read_text())
            if report.get("release_id") == release_id:
                log.info("%s: release %s already recorded; reusing %s (nothing spent)", out.name, release_id,
                         out / TEXT)
                if any(report.get(k) != v for k, v in annotate.items()):
                    report.update(annotate)
                    write_fsync(out / REPORT_JSON,
                                (json.dumps(report, indent=1, sort_keys=True, default=float) + "\n").encode())
                report["run_status"] = "reused"
                write_student_privacy_info(out, report)
                return report
        if meta is not None:  # killed after the rename, before the reports
            return finalise(out, meta, release_id, "resumed", finish)
        raise RuntimeError(f"{out}: the labels of release {release_id} are in place but its report is lost; "
                           f"restore {REPORT_JSON} or remove {out / TEXT} and this release's meta")
    if meta is not None and meta["release_id"] == release_id and meta["text_sha256"] == recorded.outputs:
        log.warning("%s: release %s was recorded but its text not written (interrupted run); completing it "
                    "from %s without spending again", out.name, release_id, pending)
        return finalise(out, meta, release_id, "resumed", finish)
    raise RuntimeError(
        f"{out}: release {release_id} is recorded in {ledger.path} but its labels are lost (no {TEXT} and no "
        f"{PENDING} with SHA-256 {recorded.outputs}). Decoding again would draw fresh noise: a new release that "
        "must be paid for. Restore the labels, or change the run's name or seed to pay for a new one.")
