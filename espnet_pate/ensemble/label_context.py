"""What the releases of one stage-4 invocation share: its inputs, the teacher ensemble, and the caches that let every
further budget, mechanism or repeat add only its own noise (encoder outputs, the teachers' own transcripts, the
public model's candidates and the teachers' log-likelihoods of them).

Reads only ``wav.scp`` of the public set: its ``text`` (the withheld true transcripts) is for scoring, after the
labels are final (``pate_labeling``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from espnet_pate.data.kaldi_dir import read_table
from espnet_pate.ensemble.pate_plan import ConfigError
from espnet_pate.privacy.digests import file_sha256

__all__ = ["LabelContext", "Stage4Inputs"]


@dataclass
class Stage4Inputs:
    teacher_dirs: List[Path]
    data_dir: Path
    out_dir: Path
    unit: str
    public_model: Optional[Path] = None
    device: str = "cpu"
    command: str = ""


class LabelContext:
    """What the entries of one invocation share: the ensemble, the public n-best, encoder outputs (caches)."""

    def __init__(self, inputs: Stage4Inputs, ensemble=None, public_speech2text=None):
        import soundfile

        from espnet_pate.ensemble.teachers import TeacherEnsemble

        self.inputs = inputs
        self.public_data = Path(inputs.data_dir).name  # the public set labelled: the students' audio
        self.ens = ensemble if ensemble is not None else TeacherEnsemble.from_dirs(inputs.teacher_dirs, inputs.device)
        self.wav_scp = read_table(Path(inputs.data_dir) / "wav.scp")
        self.wav_scp_sha256 = file_sha256(Path(inputs.data_dir) / "wav.scp")
        self._soundfile = soundfile
        self._public = public_speech2text
        self._public_conf = None
        self._enc: Dict[str, Any] = {}
        self._enc_bytes, self.max_cache_bytes = 0, 512 * 2**20  # encoder outputs kept for the next runs
        self._cands: Dict[tuple, List[List[int]]] = {}
        # The teachers' noise-free outputs per utterance: every run (another budget, mechanism or repeat) adds only
        # its own noise to them, so a sweep decodes each public utterance once.
        self._own: Dict[tuple, Optional[List[str]]] = {}
        self._loglik: Dict[tuple, np.ndarray] = {}
        self._detok = None

    def durations(self) -> Dict[str, float]:
        """Seconds of every public utterance, from the audio headers (public)."""
        return {u: self._soundfile.info(p).duration for u, p in self.wav_scp.items()}

    def load(self, utt: str) -> np.ndarray:
        speech, _ = self._soundfile.read(self.wav_scp[utt], dtype="float32")
        return speech

    def encode(self, utts: Sequence[str]):
        """Encoder outputs of a batch (cached: every run of one invocation shares them)."""
        missing = [u for u in utts if u not in self._enc]
        fresh = dict(zip(missing, self.ens.encode_batch([self.load(u) for u in missing]))) if missing else {}
        out = [fresh[u] if u in fresh else self._enc[u] for u in utts]
        size = sum(e.numel() * e.element_size() for e in fresh.values() if e is not None)
        if self._enc_bytes + size > self.max_cache_bytes:
            self._enc, self._enc_bytes = {}, 0
        self._enc.update(fresh)
        self._enc_bytes += size
        return out

    def public(self, nbest: int, beam_size: int):
        from espnet_pate.ensemble.utterance_vote import load_public_nbest

        if self._public is not None and self._public_conf is None:  # handed in by the caller: used as it is
            return self._public
        if self._public is None or self._public_conf != (nbest, beam_size):
            if self.inputs.public_model is None:
                raise ConfigError("utterance-level runs need --public-model (candidates come from it)")
            self._public = load_public_nbest(self.inputs.public_model, nbest, beam_size, self.inputs.device)
            self._public_conf = (nbest, beam_size)
        return self._public

    def candidates(self, nbest: int, beam_size: int) -> Callable[[str], List[List[int]]]:
        from espnet_pate.ensemble.utterance_vote import public_candidates

        def get(utt):
            key = (utt, nbest, beam_size)
            if key not in self._cands:
                self._cands[key] = public_candidates(self.public(nbest, beam_size), self.load(utt), nbest)
            return self._cands[key]

        return get

    def loglik(self, nbest: int, beam_size: int) -> Callable:
        """The teachers' log-likelihoods of an utterance's candidates (``UtteranceVoter.decode``'s ``loglik``),
        computed once per utterance and candidate set."""
        from espnet_pate.ensemble.utterance_vote import candidate_log_likelihoods

        def get(utt, enc, cands):
            key = (utt, nbest, beam_size)
            if key not in self._loglik:
                self._loglik[key] = candidate_log_likelihoods(self.ens, enc, cands)
            return self._loglik[key]

        return get

    def own_transcripts(self, utts: Sequence[str], max_symbols_per_frame: int = 5, batch_size: int = 8):
        """(utterance, every teacher's own 1-best text, or None when too short), ``batch_size`` at a time."""
        from espnet_pate.ensemble.own_transcripts import greedy_each

        for start in range(0, len(utts), batch_size):
            chunk = utts[start:start + batch_size]
            todo = [u for u in chunk if (u, max_symbols_per_frame) not in self._own]
            if todo:
                encs = self.encode(todo)
                ok = [i for i, e in enumerate(encs) if e is not None]
                hyps = dict(zip(ok, greedy_each(self.ens, [encs[i] for i in ok], max_symbols_per_frame)))
                for i, u in enumerate(todo):
                    self._own[u, max_symbols_per_frame] = [self.detokenize(h) for h in hyps[i]] if i in hyps else None
            for u in chunk:
                yield u, self._own[u, max_symbols_per_frame]

    def detokenize(self, token_ids: Sequence[int]) -> str:
        if self._detok is None:
            from espnet2.text.build_tokenizer import build_tokenizer
            from espnet2.text.token_id_converter import TokenIDConverter

            args = self.ens.train_args
            token_type = getattr(args, "token_type", "bpe") if args is not None else "char"
            bpemodel = getattr(args, "bpemodel", None) if args is not None else None
            tokenizer = build_tokenizer(token_type=token_type, bpemodel=bpemodel) \
                if (token_type != "bpe" or bpemodel) else None
            self._detok = (TokenIDConverter(token_list=self.ens.token_list), tokenizer)
        converter, tokenizer = self._detok
        tokens = converter.ids2tokens([t for t in token_ids if t != self.ens.blank_id])
        return (tokenizer.tokens2text(tokens) if tokenizer is not None else " ".join(tokens)).strip()
