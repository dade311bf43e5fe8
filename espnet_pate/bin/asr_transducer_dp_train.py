"""DP-SGD training of an ESPnet transducer model (utterance- or speaker-level differential privacy).

Every option of `python -m espnet_pate.bin.asr_transducer_train` (ESPnet's transducer task) plus the `--dp_*`
options (`espnet_pate.dpsgd.options`), also accepted from the YAML config. For example (`train_config.yaml`:
conf/train_dpsgd.yaml resolved over conf/model.yaml by local/train_asr.sh):

    python -m espnet_pate.bin.asr_transducer_dp_train --config exp/dpsgd_eps8/train_config.yaml \\
        --output_dir exp/dpsgd_eps8 --dp_target_epsilon 8 --init_param exp/public_only/valid.loss.ave.pth ...

ESPnet's loop, checkpoints (with the accountant's state), `--resume`, logging and n-best averaging are kept. At
the end the output directory holds dp_report.json, privacy.json, and config.yaml with a `dp_report` entry.
"""
from espnet_pate.dpsgd.task import DPSGDASRTransducerTask


def main(cmd=None):
    DPSGDASRTransducerTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
