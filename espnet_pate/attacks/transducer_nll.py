"""The RNN-T negative log-likelihood of a transcript under a released ESPnet transducer model.

One utterance at a time (no padding), in eval mode, through the model's own frontend, normalisation, encoder,
decoder and joint network, as ESPnet's ``ESPnetASRTransducerModel.forward`` computes its transducer loss, but
per utterance and without the auxiliary CTC/LM losses (an attacker scores what the transducer says). The loss is
the project's log-space RNN-T loss (the same values as torchaudio's, differentiable with respect to the input).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import torch

from espnet_pate.asr.rnnt_loss import rnnt_loss_logspace
from espnet_pate.data.kaldi_dir import KaldiDirError, read_kaldi_dir
from espnet_pate.ensemble.encoder_cache import token_ids_fn
from espnet_pate.ensemble.joint_heads import BLANK
from espnet_pate.ensemble.teachers import load_model

__all__ = ["AuditedModel", "log_mel", "nll_from_feats", "utterance_nlls"]


class AuditedModel:
    """A loaded model (eval mode, gradients off for its parameters) and its tokenizer."""

    def __init__(self, model_dir: os.PathLike | str):
        self.dir = Path(model_dir)
        self.model, self.args = load_model(self.dir)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._tokenize = token_ids_fn(self.args)

    def token_ids(self, utt: str, text: str) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self._tokenize(utt, text)), dtype=torch.long)


@torch.no_grad()
def log_mel(model, speech: np.ndarray) -> torch.Tensor:
    """[1, T, F]: the model's frontend features (log-mel) of one waveform, before normalisation."""
    x = torch.as_tensor(np.asarray(speech, dtype=np.float32)).reshape(1, -1)
    feats, _ = model._extract_feats(x, torch.tensor([x.shape[1]]))
    return feats


def nll_from_feats(model, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log P(labels | feats): feats [1, T, F] log-mel (before the model's normalisation), labels [U] token ids.
    Differentiable with respect to ``feats`` (model inversion optimises it)."""
    from espnet2.asr_transducer.utils import get_transducer_task_io

    lens = torch.tensor([feats.shape[1]])
    if model.normalize is not None:
        # ESPnet's GlobalMVN normalises in place when no gradient is needed: never the caller's tensor
        feats, lens = model.normalize(feats.clone(), lens)
    enc, enc_lens = model.encoder(feats, lens)
    decoder_in, target, t_len, u_len = get_transducer_task_io(labels.reshape(1, -1), enc_lens,
                                                              ignore_id=model.ignore_id)
    model.decoder.set_device(enc.device)
    dec = model.decoder(decoder_in)
    joint = model.joint_network(enc.unsqueeze(2), dec.unsqueeze(1))
    return rnnt_loss_logspace(joint.float(), target, t_len, u_len, blank=BLANK, reduction="sum")


def utterance_nlls(audited: AuditedModel, data_dir: os.PathLike | str,
                   progress: Callable[[str], None] = lambda m: None) -> Dict[str, Tuple[float, int]]:
    """{utt: (-log P(text | audio), number of tokens)} for every utterance of a Kaldi directory with text.
    An utterance the encoder cannot read (too short for its subsampling) is an error: an audit that silently
    drops members would report on a different set than it names."""
    import soundfile
    from espnet2.asr_transducer.utils import TooShortUttError

    kdir = read_kaldi_dir(data_dir, require_text=True)
    out: Dict[str, Tuple[float, int]] = {}
    with torch.no_grad():
        for i, utt in enumerate(kdir.utt_ids):
            speech, _ = soundfile.read(kdir.wav_scp[utt], dtype="float32")
            labels = audited.token_ids(utt, kdir.text[utt])
            if labels.numel() == 0:
                raise KaldiDirError(Path(data_dir) / "text", f"{utt}: empty transcript")
            try:
                nll = nll_from_feats(audited.model, log_mel(audited.model, speech), labels)
            except TooShortUttError as e:
                raise KaldiDirError(Path(data_dir) / "wav.scp", f"{utt}: too short for the encoder ({e})") from e
            out[utt] = (float(nll), int(labels.numel()))
            if (i + 1) % 100 == 0:
                progress(f"{audited.dir}: {i + 1}/{len(kdir.utt_ids)} utterances of {data_dir}")
    return out

