"""ESPnet transducer training with torchaudio's RNN-T loss.

Same options as `python -m espnet2.bin.asr_transducer_train` (see `--help`); use it in its place:

    python -m espnet_pate.bin.asr_transducer_train --config exp/public_only/train_config.yaml \\
        --output_dir exp/public_only ...

(`train_config.yaml`: conf/train_pretrain.yaml resolved over conf/model.yaml by local/train_asr.sh.)
"""
from espnet_pate.asr.transducer_task import PateASRTransducerTask


def main(cmd=None):
    PateASRTransducerTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
