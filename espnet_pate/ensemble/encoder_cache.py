"""The frozen public encoder's outputs, computed once per utterance, with the utterance's token ids.

Teacher heads (decoder + joint network) train over a frozen public encoder, so its output for an utterance
never changes: it is computed here once, in eval mode and one utterance at a time (no padding), exactly as
``Speech2Text`` computes it, and kept in memory for every epoch and every teacher that reads the utterance.
Text becomes token ids through ESPnet's own preprocessor built from the public model's config.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

from espnet_pate.data.kaldi_dir import KaldiDirError, read_kaldi_dir

log = logging.getLogger(__name__)


@dataclass
class CachedUtt:
    utt: str
    enc: torch.Tensor  # [T, D] encoder output
    labels: torch.Tensor  # [U] token ids (long)


def token_ids_fn(train_args) -> Callable[[str, str], np.ndarray]:
    """``(utt, text) -> token ids`` by ESPnet's ``CommonPreprocessor`` for the model's tokenizer."""
    from espnet2.tasks.asr_transducer import ASRTransducerTask

    preprocess = ASRTransducerTask.build_preprocess_fn(train_args, train=False)
    if preprocess is None:
        raise ValueError("the public model's config has use_preprocessor: false; its text cannot be tokenised")
    return lambda utt, text: preprocess(utt, {"text": text})["text"]


@torch.no_grad()
def encode_utterance(model, speech: np.ndarray) -> torch.Tensor:
    """[T, D]: frontend, normalisation and encoder of one utterance (model in eval mode)."""
    x = torch.as_tensor(np.asarray(speech, dtype=np.float32)).reshape(1, -1)
    feats, lens = model._extract_feats(x, torch.tensor([x.shape[1]]))
    if model.normalize is not None:
        feats, lens = model.normalize(feats, lens)
    return model.encoder(feats, lens)[0][0].contiguous()


def encode_kaldi_dir(model, tokenize: Callable[[str, str], np.ndarray], data_dir: os.PathLike | str,
                     cache: Dict[str, CachedUtt] | None = None) -> List[CachedUtt]:
    """Every utterance of a Kaldi directory with a transcript, encoded once (``cache``, keyed by wav path and
    utterance, is shared between directories). Utterances too short for the encoder's subsampling or with an
    empty transcript are skipped with a warning, as ESPnet's trainer cannot use them either."""
    import soundfile
    from espnet2.asr_transducer.utils import TooShortUttError

    data_dir = Path(data_dir)
    kdir = read_kaldi_dir(data_dir, require_text=True)
    cache = {} if cache is None else cache
    out, skipped = [], []
    for utt in kdir.utt_ids:
        key = f"{kdir.wav_scp[utt]}\t{utt}"
        if key not in cache:
            try:
                speech, _ = soundfile.read(kdir.wav_scp[utt], dtype="float32")
            except Exception as e:  # soundfile raises its own error types
                raise KaldiDirError(data_dir / "wav.scp", f"{utt}: cannot read {kdir.wav_scp[utt]}: {e}") from e
            labels = torch.as_tensor(np.asarray(tokenize(utt, kdir.text[utt])), dtype=torch.long)
            try:
                enc = encode_utterance(model, speech)
            except TooShortUttError:
                enc = None
            if enc is None or enc.shape[0] == 0 or labels.numel() == 0:
                skipped.append(utt)
                continue
            cache[key] = CachedUtt(utt, enc, labels)
        out.append(cache[key])
    if skipped:
        log.warning("%s: %d utterance(s) skipped (too short or empty transcript): %s", data_dir, len(skipped),
                    skipped[:5])
    if not out:
        raise KaldiDirError(data_dir, "no usable utterance")
    return out
