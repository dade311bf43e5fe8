"""ESPnet's transducer Task with torchaudio's RNN-T loss installed at model-building time.

Everything else (options, data loading, Trainer, checkpoints, averaging) is ESPnet's own, so checkpoints decode
with the stock `espnet2.bin.asr_transducer_inference.Speech2Text`.
"""
from __future__ import annotations

import argparse

from espnet2.asr_transducer.espnet_transducer_model import ESPnetASRTransducerModel
from espnet2.tasks.asr_transducer import ASRTransducerTask

from espnet_pate.asr.rnnt_loss import RNNTLoss


class PateASRTransducerTask(ASRTransducerTask):
    @classmethod
    def build_model(cls, args: argparse.Namespace) -> ESPnetASRTransducerModel:
        model = super().build_model(args)
        model.criterion_transducer = RNNTLoss(blank_id=0)  # ESPnet reserves id 0 for blank
        return model
