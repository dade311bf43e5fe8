"""Per-utterance likelihoods of a model on a data set, computed once and kept under the audit directory.

Shadow models score the same candidates for every audited model, so their likelihoods are kept in
``<cache>/<model path with / as __>/<data set>.json``; an entry older than the model's checkpoint or the data
set's wav.scp and text is recomputed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, Tuple

from espnet_pate.asr.decode import MODEL_FILE
from espnet_pate.attacks.transducer_nll import AuditedModel, utterance_nlls

__all__ = ["cached_nlls"]


def _cache_file(cache_dir: Path, model_dir: Path, data_dir: Path) -> Path:
    key = str(model_dir).strip("/").replace("/", "__")
    return cache_dir / key / f"{str(data_dir).strip('/').replace('/', '__')}.json"


def cached_nlls(model_dir: os.PathLike | str, data_dir: os.PathLike | str, cache_dir: os.PathLike | str,
                loaded: Dict[str, AuditedModel], progress: Callable[[str], None] = print
                ) -> Dict[str, Tuple[float, int]]:
    """{utt: (NLL, tokens)} of ``model_dir`` on ``data_dir``; ``loaded`` keeps models loaded between calls."""
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    path = _cache_file(Path(cache_dir), model_dir, data_dir)
    inputs = [model_dir / MODEL_FILE, data_dir / "wav.scp", data_dir / "text"]
    if path.exists() and path.stat().st_mtime >= max(p.stat().st_mtime for p in inputs):
        return {u: (v[0], v[1]) for u, v in json.loads(path.read_text()).items()}
    if str(model_dir) not in loaded:
        loaded[str(model_dir)] = AuditedModel(model_dir)
    progress(f"likelihoods of {model_dir} on {data_dir}")
    nlls = utterance_nlls(loaded[str(model_dir)], data_dir, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(nlls, sort_keys=True))
    os.replace(tmp, path)
    return nlls
