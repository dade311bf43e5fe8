"""Batches for DP-SGD: Poisson sampling of privacy units (utterances or speakers), as the accountant assumes.

Every step includes each unit independently with probability ``q`` (``sampling="poisson"``), so batch sizes vary
and a batch may be empty (it is still a step: noise only, and it is accounted).  A unit is an utterance, or a
speaker with all of his or her utterances (``utt2spk``): speaker-level DP samples speakers.  An epoch is a fixed
number of steps (``steps_per_epoch``, normally round(1/q)), so the number of steps never depends on the data.

``sampling="shuffle"`` gives fixed-size batches of units drawn without replacement (a permutation per epoch, as
ordinary training does).  It breaks the accountant's Poisson assumption: its epsilon is not a proven bound.

Randomness: a ``seed`` makes the batches of an epoch a function of (seed, epoch), for reproducible experiments
(and bit-identical resumption); without a seed every epoch draws from the operating system's entropy, as DP
randomness should (../shared/PRIVACY.md, "Ground rules").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from espnet2.iterators.abs_iter_factory import AbsIterFactory

from espnet_pate.privacy.units import PRIVACY_UNITS

logger = logging.getLogger(__name__)

SAMPLINGS = ("poisson", "shuffle")

__all__ = [
    "SAMPLINGS",
    "DpBatchSampler",
    "DpIterFactory",
    "build_units",
    "epoch_rng",
    "epoch_seed_sequence",
]


def build_units(keys: Sequence[str], unit: str, utt2spk: Optional[Dict[str, str]] = None
                ) -> Tuple[List[str], List[List[str]]]:
    """``(unit_ids, utterances of each unit)`` in a deterministic order (sorted unit ids, utterances sorted)."""
    if unit not in PRIVACY_UNITS:
        raise ValueError(f"unit must be one of {PRIVACY_UNITS}, got {unit!r}")
    if unit == "utterance":
        ks = sorted(keys)
        return ks, [[k] for k in ks]
    if utt2spk is None:
        raise ValueError("the speaker unit needs utt2spk")
    missing = [k for k in keys if k not in utt2spk]
    if missing:
        raise ValueError(f"{len(missing)} utterances have no speaker in utt2spk (e.g. {missing[0]})")
    groups: Dict[str, List[str]] = {}
    for k in keys:
        groups.setdefault(utt2spk[k], []).append(k)
    ids = sorted(groups)
    return ids, [sorted(groups[s]) for s in ids]


def epoch_seed_sequence(seed: int, epoch: int, stream: int) -> np.random.SeedSequence:
    """The randomness of one epoch and stream of a run with a fixed seed: a function of (seed, epoch, stream)."""
    seed = int(seed) % 2**64
    return np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, int(epoch), stream])


def epoch_rng(seed: Optional[int], epoch: int, stream: int) -> np.random.Generator:
    """numpy Generator for one epoch and stream: from (seed, epoch, stream), or OS entropy if seed is None."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng(epoch_seed_sequence(seed, epoch, stream))


class DpBatchSampler:
    """The units of each step of an epoch (lists of unit indices; Poisson: variable size, possibly empty)."""

    STREAM = 1  # numpy SeedSequence stream of the sampling (the noise uses another)

    def __init__(self, num_units: int, sample_rate: float, steps_per_epoch: int, sampling: str = "poisson",
                 seed: Optional[int] = None):
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if num_units < 1 or steps_per_epoch < 1:
            raise ValueError("need at least one unit and one step per epoch")
        self.num_units = int(num_units)
        self.sample_rate = float(sample_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.sampling = sampling
        self.seed = seed
        self.fixed_batch_size = max(1, int(round(sample_rate * num_units)))

    def epoch(self, epoch: int) -> List[np.ndarray]:
        rng = epoch_rng(self.seed, epoch, self.STREAM)
        if self.sampling == "poisson":
            return [np.flatnonzero(rng.random(self.num_units) < self.sample_rate)
                    for _ in range(self.steps_per_epoch)]
        # shuffle: consecutive slices of permutations (a new permutation whenever one runs out)
        out, perm, pos = [], rng.permutation(self.num_units), 0
        for _ in range(self.steps_per_epoch):
            if pos + self.fixed_batch_size > self.num_units:
                perm, pos = rng.permutation(self.num_units), 0
            out.append(np.sort(perm[pos: pos + self.fixed_batch_size]))
            pos += self.fixed_batch_size
        return out

    def __repr__(self) -> str:
        return (f"DpBatchSampler(sampling={self.sampling}, units={self.num_units}, q={self.sample_rate:.6g}, "
                f"steps_per_epoch={self.steps_per_epoch}, seed={self.seed})")


class _Iter:
    """Iterator over ``(utt_ids, batch)`` for one epoch; an empty step gives ``([], {})``. Has ``len``."""

    def __init__(self, factory: "DpIterFactory", steps: List[List[str]]):
        self.factory = factory
        self.steps = steps

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Tuple[List[str], Dict]]:
        f = self.factory
        nonempty = [s for s in self.steps if s]
        loader = iter(())
        if nonempty:
            from torch.utils.data import DataLoader

            loader = iter(DataLoader(dataset=f.dataset, batch_sampler=nonempty, num_workers=f.num_workers,
                                     collate_fn=f.collate_fn, pin_memory=f.pin_memory))
        for s in self.steps:
            if not s:
                yield [], {}
            else:
                yield next(loader)


class DpIterFactory(AbsIterFactory):
    """ESPnet iterator factory of DP-SGD batches (``build_iter(epoch)`` as ESPnet's Trainer calls it)."""

    def __init__(self, dataset, unit_ids: Sequence[str], unit_keys: Sequence[Sequence[str]],
                 sampler: DpBatchSampler, collate_fn=None, num_workers: int = 0, pin_memory: bool = False):
        if len(unit_ids) != sampler.num_units or len(unit_keys) != sampler.num_units:
            raise ValueError("units and sampler disagree")
        self.dataset = dataset
        self.unit_ids = list(unit_ids)
        self.unit_keys = [list(k) for k in unit_keys]
        self.sampler = sampler
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def batches(self, epoch: int) -> List[List[str]]:
        """Utterance ids of each step of ``epoch`` (units kept together, in unit order)."""
        return [[k for u in idx for k in self.unit_keys[u]] for idx in self.sampler.epoch(epoch)]

    def build_iter(self, epoch: int, shuffle: bool = None) -> _Iter:
        steps = self.batches(epoch)
        sizes = [len(s) for s in steps]
        logger.info(f"[train] DP-SGD epoch {epoch}: {len(steps)} steps, utterances per step mean "
                     f"{np.mean(sizes):.1f} min {min(sizes)} max {max(sizes)} ({self.sampler})")
        return _Iter(self, steps)

    @staticmethod
    def default_utt2spk(train_data_path_and_name_and_type) -> Path:
        return Path(train_data_path_and_name_and_type[0][0]).parent / "utt2spk"
