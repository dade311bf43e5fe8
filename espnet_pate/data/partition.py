"""Recipe stage 3: split the sensitive Kaldi directory into K disjoint teacher shards.

Layout: out_dir/shard_0 ... out_dir/shard_{K-1} (Kaldi directories) and out_dir/manifest.json. The manifest is
written last, so its presence marks a complete partition. A rerun with the same settings and the same source
reuses it; anything else is refused unless overwrite=True, because teachers trained on old shards must never be
mixed silently with new ones.

Assignment:
- "hash" (default): a unit's shard is a keyed hash of (seed, its id) alone. Less balanced, but adding or removing
  one unit changes exactly one shard, which is what PATE's one-teacher-per-unit argument assumes.
- "greedy": largest unit first onto the shard with fewest utterances; the seed only orders units of
  equal size. Balanced, but where a unit lands depends on every other unit's size, so adding or removing one
  speaker can move others between shards, so a PATE epsilon computed for one changed teacher does not hold.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from espnet_pate.data.kaldi_dir import subset_kaldi_dir
from espnet_pate.data.validate import check_tables
from espnet_pate.privacy.units import PRIVACY_UNITS

MANIFEST = "manifest.json"
ASSIGNMENTS = ("greedy", "hash")
SOURCE_FILES = ("wav.scp", "utt2spk", "text")
SHARD_FILES = ("wav.scp", "utt2spk", "spk2utt", "text")
_SHARD_NAME = re.compile(r"shard_\d+")


class PartitionError(Exception):
    """A partition that cannot be made, or one that would replace existing shards without being told to."""


def shard_dir(out_dir: os.PathLike | str, k: int) -> Path:
    return Path(out_dir) / f"shard_{k}"


def read_manifest(out_dir: os.PathLike | str) -> dict:
    path = Path(out_dir) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PartitionError(f"{path}: cannot read partition manifest: {e}") from e


def list_shards(out_dir: os.PathLike | str) -> List[Path]:
    """The shard directories of a completed partition, in teacher order."""
    return [Path(out_dir) / shard["name"] for shard in read_manifest(out_dir)["shards"]]


def assign_units(sizes: Mapping[str, int], num_shards: int, seed: int = 0, assignment: str = "hash") -> Dict[str, int]:
    """Map each unit (speaker or utterance id, with its utterance count) to a shard index."""
    units = sorted(sizes, key=lambda u: u.encode("utf-8"))
    if assignment == "hash":
        return {u: _keyed_hash(seed, u) % num_shards for u in units}
    random.Random(seed).shuffle(units)
    units.sort(key=lambda u: -sizes[u])  # stable sort: the seeded shuffle decides between equal sizes
    loads = [(0, 0, k) for k in range(num_shards)]  # (utterances, units, shard), least loaded on top
    shard_of = {}
    for unit in units:
        utts, count, k = heapq.heappop(loads)
        shard_of[unit] = k
        heapq.heappush(loads, (utts + sizes[unit], count + 1, k))
    return shard_of


def partition_data_dir(
    src_dir: os.PathLike | str,
    out_dir: os.PathLike | str,
    num_shards: int,
    unit: str = "speaker",
    seed: int = 0,
    assignment: str = "hash",
    overwrite: bool = False,
) -> dict:
    """Write K disjoint shards of src_dir under out_dir and return the manifest (see the module docstring)."""
    if unit not in PRIVACY_UNITS:
        raise ValueError(f"unit must be one of {PRIVACY_UNITS}, got {unit!r}")
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
    if num_shards < 1:
        raise PartitionError(f"need at least one shard, got {num_shards}")
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    src = check_tables(src_dir, require_text=False)
    settings = {"unit": unit, "seed": seed, "num_shards": num_shards, "assignment": assignment,
                "source_sha256": _tables_sha256(src_dir, SOURCE_FILES)}

    existing = _existing_partition(out_dir, settings, overwrite)
    if existing is not None:
        return existing

    speakers = set(src.utt2spk.values())
    of_unit = (lambda utt: src.utt2spk[utt]) if unit == "speaker" else (lambda utt: utt)
    sizes: Dict[str, int] = {}
    for utt in src.wav_scp:
        sizes[of_unit(utt)] = sizes.get(of_unit(utt), 0) + 1
    if num_shards > len(sizes):
        raise PartitionError(
            f"{src_dir}: {num_shards} shards requested but there are only {len(sizes)} {unit}s "
            f"({len(src.wav_scp)} utterances, {len(speakers)} speakers); lower --num-shards"
            + (" or use --unit utterance" if unit == "speaker" else ""))
    shard_of = assign_units(sizes, num_shards, seed, assignment)
    shard_utts: List[List[str]] = [[] for _ in range(num_shards)]
    for utt in src.wav_scp:
        shard_utts[shard_of[of_unit(utt)]].append(utt)
    empty = [k for k, utts in enumerate(shard_utts) if not utts]
    if empty:
        raise PartitionError(f"{src_dir}: shards {empty} would be empty with {assignment} assignment of "
                             f"{len(sizes)} {unit}s into {num_shards}; lower --num-shards or change the seed")

    _remove_partition(out_dir)
    shards = []
    for k, utts in enumerate(shard_utts):
        dest = shard_dir(out_dir, k)
        subset_kaldi_dir(src, dest, utts)
        shards.append({"name": dest.name, "num_utts": len(utts),
                       "num_speakers": len({src.utt2spk[u] for u in utts}),
                       "sha256": _tables_sha256(dest, SHARD_FILES)})
    manifest = {**settings, "source_dir": str(src_dir.resolve()), "num_utts": len(src.wav_scp),
                "num_speakers": len(speakers), "shards": shards}
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / MANIFEST)
    return manifest


def _keyed_hash(seed: int, unit: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{unit}".encode("utf-8")).digest()[:8], "big")


def _tables_sha256(directory: Path, names) -> str:
    digest = hashlib.sha256()
    for name in names:
        path = directory / name
        if path.exists():
            data = path.read_bytes()
            digest.update(f"{name}\0{len(data)}\0".encode("utf-8") + data)
    return digest.hexdigest()


def _existing_partition(out_dir: Path, settings: dict, overwrite: bool) -> Optional[dict]:
    """The manifest of an identical, untouched partition in out_dir; None where one may be written."""
    if not (out_dir / MANIFEST).exists():
        return None
    manifest = read_manifest(out_dir)
    changed = [f"{key} {manifest.get(key)!r} -> {value!r}" for key, value in settings.items()
               if manifest.get(key) != value]
    modified = None if changed else _modified_shard(out_dir, manifest)
    if not changed and modified is None:
        return manifest
    if overwrite:
        return None
    if changed:
        raise PartitionError(
            f"{out_dir / MANIFEST} holds a partition made with other settings or source ({'; '.join(changed)}). "
            "Teachers trained on those shards would no longer match: use another output directory, "
            "or pass overwrite (--overwrite) to replace them.")
    raise PartitionError(
        f"{modified} is missing or differs from what {out_dir / MANIFEST} recorded: it was changed after "
        "partitioning, and teachers may have been trained on the original. Restore it, or pass "
        "overwrite (--overwrite) to partition again.")


def _modified_shard(out_dir: Path, manifest: dict) -> Optional[Path]:
    for shard in manifest["shards"]:
        path = out_dir / shard["name"]
        if not path.is_dir() or _tables_sha256(path, SHARD_FILES) != shard["sha256"]:
            return path
    return None


def _remove_partition(out_dir: Path) -> None:
    # The manifest goes first, so a run killed while removing or writing never leaves a manifest over partial shards.
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for path in out_dir.iterdir():
        if path.is_dir() and _SHARD_NAME.fullmatch(path.name):
            shutil.rmtree(path)
