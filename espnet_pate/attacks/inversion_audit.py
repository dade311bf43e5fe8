"""Model inversion against released models: reconstructions of sensitive training utterances from their
transcripts, their closeness to the originals, and whether an evaluation-only speaker classifier names the
speaker (espnet_pate.attacks.speaker_id: trained on sensitive data, never released).

Targets: one utterance from each of the first ``num_targets`` speakers of the member set (sorted speaker ids,
a seeded choice among each speaker's utterances); the classifier trains on every other member utterance, so a
target is never in its training set.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Mapping, Tuple

import numpy as np
import soundfile

from espnet_pate.attacks.inversion import InversionConfig, invert
from espnet_pate.attacks.similarity import logmel_correlation, mel_cepstral_distortion
from espnet_pate.attacks.speaker_id import SpeakerClassifier
from espnet_pate.attacks.transducer_nll import AuditedModel, log_mel
from espnet_pate.data.kaldi_dir import read_kaldi_dir

__all__ = ["choose_targets", "audit_inversion"]


def choose_targets(member_dir: os.PathLike | str, num_targets: int, seed: int = 0) -> List[str]:
    kdir = read_kaldi_dir(member_dir)
    rng = np.random.default_rng(seed)
    spk2utt = kdir.spk2utt()
    return [spk2utt[s][int(rng.integers(len(spk2utt[s])))] for s in sorted(spk2utt)[:num_targets]]


def _frontend_key(audited: AuditedModel) -> Tuple:
    return (audited.args.frontend, tuple(sorted((audited.args.frontend_conf or {}).items())))


def audit_inversion(models: Mapping[str, os.PathLike | str], member_dir: os.PathLike | str, num_targets: int,
                    cfg: InversionConfig, progress: Callable[[str], None] = print) -> Tuple[Dict, Dict]:
    """(record, arrays): the record for the report; arrays = {"original": {utt: [T, F]},
    <model name>: {utt: [T, F]}} for the figure. ``models``: {name: experiment directory}."""
    kdir = read_kaldi_dir(member_dir)
    targets = choose_targets(member_dir, num_targets, cfg.seed)
    loaded = {name: AuditedModel(d) for name, d in models.items()}
    first = next(iter(loaded.values()))
    if len({_frontend_key(m) for m in loaded.values()}) != 1:
        raise ValueError("the audited models use different frontends: their reconstructions cannot be compared")
    feats = {u: log_mel(first.model, soundfile.read(kdir.wav_scp[u], dtype="float32")[0])[0].numpy()
             for u in kdir.utt_ids}
    train = [u for u in kdir.utt_ids if u not in targets]
    classifier = SpeakerClassifier([feats[u] for u in train], [kdir.utt2spk[u] for u in train], cfg.seed)
    arrays: Dict[str, Dict[str, np.ndarray]] = {"original": {u: feats[u] for u in targets}}
    record: Dict = {
        "members": str(member_dir), "targets": targets, "inversion": cfg.as_dict(),
        "speaker_classifier": {
            "note": "evaluation only, trained on sensitive utterances: never released",
            "speakers": len(classifier.speakers), "train_utterances": len(train),
            "chance": 1.0 / len(classifier.speakers),
            "accuracy_on_originals": float(np.mean([classifier.rank_of(feats[u], kdir.utt2spk[u]) == 1
                                                    for u in targets]))},
        "models": {}}
    for name, audited in loaded.items():
        rows, arrays[name] = [], {}
        for u in targets:
            labels = audited.token_ids(u, kdir.text[u])
            out = invert(audited.model, labels, feats[u].shape[0], feats[u].shape[1], cfg)
            arrays[name][u] = out["feats"]
            rows.append({"utt": u, "speaker": kdir.utt2spk[u], "nll_start": out["nll_start"], "nll": out["nll"],
                         "correlation": logmel_correlation(feats[u], out["feats"]),
                         "mcd_db": mel_cepstral_distortion(feats[u], out["feats"]),
                         "speaker_rank": classifier.rank_of(out["feats"], kdir.utt2spk[u])})
            progress(f"inversion {name} {u}: correlation {rows[-1]['correlation']:.3f}, "
                     f"MCD {rows[-1]['mcd_db']:.2f} dB, speaker rank {rows[-1]['speaker_rank']}")
        record["models"][name] = {
            "dir": str(models[name]), "per_utterance": rows,
            "correlation": float(np.mean([r["correlation"] for r in rows])),
            "mcd_db": float(np.mean([r["mcd_db"] for r in rows])),
            "speaker_top1": float(np.mean([r["speaker_rank"] == 1 for r in rows])),
            "speaker_mean_rank": float(np.mean([r["speaker_rank"] for r in rows]))}
    return record, arrays

