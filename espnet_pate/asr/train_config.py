"""Training configs: one model config (conf/model.yaml) and short per-role files that name it as their base.

A role file (conf/train_student.yaml, ...) says ``base_config: model.yaml`` (a path relative to itself) and holds
only the options of its role; ``resolve_config`` gives the whole mapping: the base's options, replaced by the
role's, mappings merged key by key (a role's ``optim_conf: {lr: 0.001}`` keeps the base's other optim_conf keys),
lists and other values replaced. ESPnet's ``--config`` takes one file, so ``local/train_asr.sh`` writes the
resolved mapping beside the model (``python -m espnet_pate.bin.resolve_config``) and trains from that.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

import yaml

BASE_KEY = "base_config"
# what only the model config may set: every fine-tune loads the public model's checkpoint into this architecture
ARCHITECTURE_KEYS = ("frontend", "frontend_conf", "encoder_conf", "decoder", "decoder_conf", "joint_network_conf")

__all__ = ["ARCHITECTURE_KEYS", "BASE_KEY", "resolve_config"]


def _merge(base: Dict, override: Dict) -> Dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_config(path: os.PathLike | str, _seen: Optional[List[Path]] = None) -> Dict:
    """The options of the YAML file ``path`` over those of its ``base_config`` chain (resolved, without the key)."""
    path = Path(path)
    seen = (_seen or []) + [path.resolve()]
    try:
        conf = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the config: {e}") from None
    if conf is None:
        conf = {}
    if not isinstance(conf, dict):
        raise ValueError(f"{path}: expected a mapping of options")
    base = conf.pop(BASE_KEY, None)
    if base is None:
        return conf
    base_path = path.parent / str(base)
    if base_path.resolve() in seen:
        raise ValueError(f"{path}: {BASE_KEY} {base} leads back to itself")
    if not base_path.is_file():
        raise ValueError(f"{path}: {BASE_KEY} {base}: no such file {base_path}")
    return _merge(resolve_config(base_path, seen), conf)
