"""SHA-256 digests of what a release is made of: files, settings and inputs (arrays and bytes by their hash).

A release id (``make_release_id``) is a function of the release's settings and inputs, so rerunning the same
release finds its record in the privacy ledger; file digests name a release's outputs (labels, a model file).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

__all__ = ["bytes_sha256", "canonical", "file_sha256", "make_release_id"]


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        return {"array_sha256": hashlib.sha256(arr.tobytes()).hexdigest(), "shape": list(arr.shape),
                "dtype": arr.dtype.str}
    if isinstance(value, bytes):
        return {"bytes_sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def file_sha256(path: os.PathLike | str) -> str:
    """SHA-256 of a file's bytes (a release's outputs: labels, a model file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_release_id(what: str, mechanism: str, params: dict, inputs: Any = None) -> str:
    """A stable id for a release: SHA-256 of its settings and inputs (arrays and bytes enter by their hash)."""
    payload = json.dumps(canonical({"what": what, "mechanism": mechanism, "params": params, "inputs": inputs}),
                         sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]
