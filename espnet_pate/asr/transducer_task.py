"""ESPnet's transducer Task with torchaudio's RNN-T loss installed at model-building time.

Everything else (options, data loading, Trainer, checkpoints, averaging) is ESPnet's own, so checkpoints decode
with the stock `espnet2.bin.asr_transducer_inference.Speech2Text`. The BatchNorm layers under ``freeze_param``
are frozen too (espnet_pate.asr.frozen_batch_norm): ESPnet freezes their weights but would keep updating their
running statistics, so the frozen part of a teacher would drift on its shard instead of staying the public one.
"""
from __future__ import annotations

import argparse
import logging

from espnet2.asr_transducer.espnet_transducer_model import ESPnetASRTransducerModel
from espnet2.tasks.asr_transducer import ASRTransducerTask

from espnet_pate.asr.frozen_batch_norm import freeze_batch_norms
from espnet_pate.asr.rnnt_loss import RNNTLoss


class PateASRTransducerTask(ASRTransducerTask):
    @classmethod
    def build_model(cls, args: argparse.Namespace) -> ESPnetASRTransducerModel:
        model = super().build_model(args)
        model.criterion_transducer = RNNTLoss(blank_id=0)  # ESPnet reserves id 0 for blank
        frozen_prefixes = list(getattr(args, "freeze_param", None) or [])
        if frozen_prefixes:
            frozen = freeze_batch_norms(model, frozen_prefixes)
            logging.info("BatchNorm statistics frozen under freeze_param: %s", frozen)
        return model
