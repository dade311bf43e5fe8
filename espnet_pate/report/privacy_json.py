"""``<system>/privacy.json``: a system's privacy claim, written and read here only.

Every stage that produces a system writes it through ``write_privacy_info`` (DP-SGD's trainer, stage 4's release,
``python -m espnet_pate.bin.privacy_info``), stage 7's results table reads it through ``read_privacy_info``, and a
student inherits its labels' claim through ``inherit_privacy_info`` (no shell ``cp``). A system without it has no
privacy claim (a teacher, or a model not released).

``is_public_model`` answers whether a model was trained on public data only (mechanism ``public_only``): the only
kind a DP-SGD run may start from, since starting from a model that has seen sensitive data would compose with
that model's cost, which a fresh accountant does not know.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict

PRIVACY_FILE = "privacy.json"
PUBLIC_MECHANISMS = ("public_only",)

__all__ = ["PRIVACY_FILE", "PUBLIC_MECHANISMS", "inherit_privacy_info", "is_public_model", "read_privacy_info",
           "write_privacy_info"]


def write_privacy_info(system_dir: os.PathLike | str, **fields) -> Path:
    """Write ``fields`` as the system's privacy.json (whole file replaced atomically)."""
    path = Path(system_dir) / PRIVACY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(fields, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_privacy_info(system_dir: os.PathLike | str) -> Dict:
    """The system's claim, or {} when it has none; a clear error naming the file when it is not a JSON object."""
    path = Path(system_dir) / PRIVACY_FILE
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return info


def inherit_privacy_info(source_dir: os.PathLike | str, system_dir: os.PathLike | str, **extra) -> Path:
    """A system trained only on ``source_dir``'s released output (a student on released labels) inherits its
    claim: post-processing costs nothing more. ``extra`` fields are added (e.g. ``inherited_from``)."""
    info = read_privacy_info(source_dir)
    if not info:
        raise FileNotFoundError(f"{Path(source_dir) / PRIVACY_FILE}: no privacy claim to inherit")
    return write_privacy_info(system_dir, **dict(info, inherited_from=str(source_dir), **extra))


def is_public_model(model_dir: os.PathLike | str) -> bool:
    return read_privacy_info(model_dir).get("mechanism") in PUBLIC_MECHANISMS
