"""Decoding Kaldi directories with ESPnet's stock transducer `Speech2Text`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Mapping, Optional

import soundfile
import torch
import yaml

from espnet_pate.data.kaldi_dir import read_table

CONFIG_FILE = "config.yaml"
MODEL_FILE = "valid.loss.ave.pth"


def load_speech2text(model_dir: os.PathLike | str, decode_config: Optional[os.PathLike | str] = None,
                     device: str = "cpu", model_file: str = MODEL_FILE, **options):
    """The stock Speech2Text for a model trained by this recipe (`model_dir/config.yaml` + checkpoint);
    ``options`` (Speech2Text's own: beam_size, nbest, ...) go over those of ``decode_config``."""
    from espnet2.bin.asr_transducer_inference import Speech2Text

    conf: Dict = {}
    if decode_config is not None:
        conf = yaml.safe_load(Path(decode_config).read_text()) or {}
    conf.update(options)
    model_dir = Path(model_dir)
    return Speech2Text(asr_train_config=str(model_dir / CONFIG_FILE), asr_model_file=str(model_dir / model_file),
                       device=device, **conf)


def decode_wav_scp(speech2text, wav_scp: Mapping[str, str]) -> Dict[str, str]:
    """Best hypothesis per utterance (empty string where the model emits nothing)."""
    hyps: Dict[str, str] = {}
    with torch.inference_mode():
        for utt, path in wav_scp.items():
            speech, _ = soundfile.read(path, dtype="float32")
            nbest = speech2text(speech)
            hyps[utt] = speech2text.hypotheses_to_results(nbest)[0][0] if nbest else ""
    return hyps


def decode_data_dir(speech2text, data_dir: os.PathLike | str) -> Dict[str, str]:
    return decode_wav_scp(speech2text, read_table(Path(data_dir) / "wav.scp"))
