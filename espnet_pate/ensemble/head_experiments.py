"""Teachers trained as heads written as ESPnet experiment directories, as ``local/train_asr.sh`` leaves them.

``teacher_<k>/config.yaml`` is the public model's config with the teacher's training options and data; the model
files are full state dicts (the frozen public tensors unchanged, the teacher's head in place):
``valid.loss.best.pth``, ``valid.loss.ave_<n>best.pth`` and ``valid.loss.ave.pth`` (the average of the n best
epochs by validation loss, as ESPnet's ``average_nbest_models``), then the ``.done`` marker. Stock
``Speech2Text`` and ``TeacherEnsemble.from_dirs`` load them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Mapping

import torch
import yaml

from espnet_pate.asr.decode import MODEL_FILE

TRAINING_KEYS = ("batch_type", "batch_size", "max_epoch", "patience", "optim", "optim_conf", "scheduler",
                 "scheduler_conf", "grad_clip", "keep_nbest_models", "best_model_criterion", "seed", "freeze_param")


def teacher_config(public_config: Mapping, train_config: Mapping, shard_dir: os.PathLike | str,
                   valid_dir: os.PathLike | str, out_dir: os.PathLike | str, init_param: str) -> Dict:
    cfg = dict(public_config)
    cfg.update({k: train_config[k] for k in TRAINING_KEYS if k in train_config})
    cfg.update({
        "output_dir": str(out_dir), "init_param": [init_param],
        "train_data_path_and_name_and_type": [[f"{shard_dir}/wav.scp", "speech", "sound"],
                                              [f"{shard_dir}/text", "text", "text"]],
        "valid_data_path_and_name_and_type": [[f"{valid_dir}/wav.scp", "speech", "sound"],
                                              [f"{valid_dir}/text", "text", "text"]],
        "trained_by": "espnet_pate.bin.train_teacher_heads (heads of all teachers in one process)",
    })
    return cfg


def averaged(snapshots: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Mean of state dicts, in the order given (ESPnet's averaging sums then divides)."""
    out = {k: v.clone() for k, v in snapshots[0].items()}
    for snap in snapshots[1:]:
        for k in out:
            out[k] += snap[k]
    return {k: v / len(snapshots) for k, v in out.items()}


def write_teacher_dir(out_dir: os.PathLike | str, config: Mapping, public_state: Mapping[str, torch.Tensor],
                      best_heads: List[Dict[str, torch.Tensor]], valid_losses: List[float], mark_done: bool = True
                      ) -> Path:
    """``best_heads``: the head state dicts of the n best epochs, best first; ``valid_losses``: every epoch's;
    ``mark_done`` False: the caller writes ``.done`` after what it still adds (a DP release)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=True, allow_unicode=True))

    def full(head):
        state = dict(public_state)
        for k, v in head.items():
            state[k] = v.to(public_state[k].dtype)
        return state

    n = len(best_heads)
    torch.save(full(best_heads[0]), out / "valid.loss.best.pth")
    torch.save(full(averaged(best_heads)), out / f"valid.loss.ave_{n}best.pth")
    link = out / MODEL_FILE
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(f"valid.loss.ave_{n}best.pth")
    with open(out / "valid_loss.txt", "w") as f:
        f.writelines(f"epoch {e + 1} valid.loss {loss:.6f}\n" for e, loss in enumerate(valid_losses))
    if mark_done:
        (out / ".done").touch()
    return out
