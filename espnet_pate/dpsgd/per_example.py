"""Exact per-example (or per-speaker) clipped gradients and the Gaussian mechanism of DP-SGD for ESPnet RNN-T.

For a Poisson-sampled batch this computes

    g_hat = ( sum_units clip_C( sum_{examples e of unit} grad loss_e )  +  N(0, (sigma C)^2 I) ) / expected_units

where a unit is an utterance (default) or a speaker (``group_ids``), clip_C(g) = g * min(1, C / (||g|| + 1e-6)),
and ``expected_units`` is q * (number of units in the data set), the expected batch size of Poisson sampling
(dividing by the realised batch size would leak it).  A unit whose gradient is not finite contributes zero (a
function of that unit alone).  ../shared/PRIVACY.md, "DP-SGD".

The model must have gone through ``espnet_pate.dpsgd.model_fixes.make_dp_exact`` (otherwise an example's gradient
depends on the rest of the batch).  Two exact methods:

* ``method="vmap"`` (default): ``torch.func.vmap(grad(...))`` over ``PerExampleLoss`` (the model's own modules,
  written for one example: ``espnet_pate.dpsgd.per_example_loss``), transducer plus auxiliary CTC loss.
  No auxiliary LM loss.
* ``method="loop"``: one forward/backward of the model's own ``forward`` (its ``criterion_transducer``) per unit on
  that unit's examples only.  Works for any configuration ``make_dp_exact`` accepts, including auxiliary losses.

Both agree with the example-alone gradient to ~1e-6 relative (tests/test_per_example_grads.py); their cost against
a normal step is measured by benchmarks/bench_dpsgd_step.py (README).

Typical use in a training step::

    engine = PerExampleGradients(model)                       # after make_dp_exact(model)
    stats = engine.dp_step_grads(speech, speech_lengths, text, text_lengths,
                                 clip_norm=C, noise_multiplier=sigma, expected_batch_size=q * N,
                                 group_ids=None, max_rows=32, generator=gen)  # writes p.grad
    optimizer.step()
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.func import functional_call, grad_and_value, vmap

from espnet_pate.dpsgd.model_fixes import is_dp_exact, per_example_feats, subsampled_lengths
from espnet_pate.dpsgd.per_example_loss import PerExampleLoss

METHODS = ("vmap", "loop")
CLIP_EPS = 1e-6

__all__ = [
    "METHODS",
    "ClipStats",
    "PerExampleGradients",
    "add_noise",
    "clip_and_sum",
    "make_noise_generator",
    "set_grads",
    "unit_chunks",
    "unit_index",
]

Grads = Dict[str, torch.Tensor]

# ------------------------------------------------------------------------------------ noise & clipping
def make_noise_generator(seed: Optional[int] = None, device: str | torch.device = "cpu") -> torch.Generator:
    """Generator for the DP noise: seeded from the operating system unless ``seed`` is given.

    A fixed seed is for reproducible experiments only: record it and flag the run as not for release.
    """
    g = torch.Generator(device=device)
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1)
    g.manual_seed(int(seed))
    return g


def clip_and_sum(unit_grads: Grads, clip_norm: float) -> Tuple[Grads, torch.Tensor, torch.Tensor]:
    """Clip each unit's gradient (leading dim) to L2 norm ``clip_norm`` over all tensors, and sum the units.

    Returns ``(sum, norms (U,), factors (U,))``.
    """
    names = list(unit_grads)
    if not names:
        raise ValueError("no gradients")
    sq = None
    for n in names:
        g = unit_grads[n]
        s = g.reshape(g.size(0), -1).double().pow(2).sum(1)
        sq = s if sq is None else sq + s
    norms = sq.sqrt()
    factors = torch.clamp(clip_norm / (norms + CLIP_EPS), max=1.0)
    out = {}
    for n in names:
        g = unit_grads[n]
        out[n] = torch.tensordot(factors.to(g.dtype), g, dims=([0], [0]))
    return out, norms.float(), factors.float()


def add_noise(
    grad_sum: Grads,
    clip_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    generator: Optional[torch.Generator] = None,
) -> Grads:
    """(sum + N(0, (noise_multiplier * clip_norm)^2) per coordinate) / expected_batch_size."""
    if expected_batch_size <= 0:
        raise ValueError("expected_batch_size must be > 0")
    std = float(noise_multiplier) * float(clip_norm)
    out = {}
    for n, g in grad_sum.items():
        noise = torch.normal(0.0, std, size=g.shape, generator=generator, device=g.device, dtype=g.dtype) \
            if std > 0 else torch.zeros_like(g)
        out[n] = (g + noise) / float(expected_batch_size)
    return out


def set_grads(model: torch.nn.Module, grads: Grads) -> None:
    """``grads`` (by parameter name) into ``p.grad`` of the trainable parameters, None for the frozen ones: what
    the optimizer sees is exactly the DP gradient."""
    for p in model.parameters():
        p.grad = None
    for n, p in model.named_parameters():
        if p.requires_grad:
            p.grad = grads[n].to(p.dtype)


def unit_index(group_ids: Optional[Sequence], batch_size: int) -> Tuple[torch.Tensor, int]:
    """Map per-example group ids (any hashable) to 0..U-1 in order of first appearance; None = one per example."""
    if group_ids is None:
        return torch.arange(batch_size), batch_size
    ids = list(group_ids.tolist() if torch.is_tensor(group_ids) else group_ids)
    if len(ids) != batch_size:
        raise ValueError(f"{len(ids)} group ids for {batch_size} examples")
    seen: Dict[object, int] = {}
    idx = [seen.setdefault(g, len(seen)) for g in ids]
    return torch.tensor(idx, dtype=torch.long), len(seen)


def unit_chunks(unit_of_row: Sequence, max_rows: int, lengths: Optional[Sequence[int]] = None) -> List[List[int]]:
    """Rows grouped by unit, packed greedily into chunks of <= max_rows rows (a unit is never split).

    With ``lengths``, units go in order of their longest utterance, so that a chunk pads little (vmap computes
    every example at the chunk's longest length); the sum over units does not depend on the order.
    """
    groups: Dict[object, List[int]] = {}
    for i, u in enumerate(unit_of_row):
        groups.setdefault(u, []).append(i)
    units = list(groups.values())
    if lengths is not None:
        units.sort(key=lambda rows: max(int(lengths[i]) for i in rows))
    chunks, cur = [], []
    for rows in units:
        if cur and len(cur) + len(rows) > max_rows:
            chunks.append(cur)
            cur = []
        cur = cur + rows
    if cur:
        chunks.append(cur)
    return chunks


def _zero_nonfinite(unit_grads: Grads) -> Tuple[Grads, int]:
    """Units whose gradient has a non-finite entry set to zero (a decision on that unit alone); their count."""
    sq = sum(g.reshape(g.size(0), -1).double().pow(2).sum(1) for g in unit_grads.values())
    bad = ~torch.isfinite(sq)
    if not bool(bad.any()):
        return unit_grads, 0
    keep = (~bad).to(next(iter(unit_grads.values())).dtype)
    return {n: torch.nan_to_num(g) * keep.view(-1, *([1] * (g.dim() - 1))).to(g.device)
            for n, g in unit_grads.items()}, int(bad.sum())


@dataclass
class ClipStats:
    losses: torch.Tensor  # (B,) per-example losses (per-unit means with the loop method)
    norms: torch.Tensor  # (U,) per-unit gradient norms before clipping
    factors: torch.Tensor  # (U,) clipping factors
    num_units: int
    nonfinite_units: int = 0

    @property
    def clipped_fraction(self) -> float:
        return float((self.factors < 1.0).float().mean()) if self.num_units else 0.0

    def as_dict(self) -> Dict[str, float]:
        """Operator statistics of one step, under the names the DP-SGD trainer reports."""
        return {
            "loss": float(self.losses.mean()) if self.losses.numel() else float("nan"),
            "batch_utts": float(self.losses.numel()),
            "batch_units": float(self.num_units),
            "unit_grad_norm_median": float(self.norms.median()) if self.num_units else float("nan"),
            "clipped_fraction": self.clipped_fraction if self.num_units else float("nan"),
            "nonfinite_units": float(self.nonfinite_units),
        }


# ------------------------------------------------------------------------------------------ engines
class UnitClippedGradients:
    """The mechanism both engines share: per chunk of a batch (a unit never split), the units' gradients, their
    non-finite rule and clipping, summed; then the Gaussian noise, and the result written into ``p.grad``.

    A subclass says how many examples a batch holds and how long each is (``_rows``), and computes one chunk's
    unit gradients (``_chunk_unit_grads``). A batch is the engine's own positional arguments; the DP settings are
    keywords.
    """

    model: torch.nn.Module

    def trainable(self) -> Dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _rows(self, batch: tuple) -> Tuple[int, Sequence[int]]:
        """Number of examples in ``batch`` and their lengths (chunks group units of similar length)."""
        raise NotImplementedError

    def _chunk_unit_grads(self, batch: tuple, rows: List[int], unit_ids: List) -> Tuple[Grads, torch.Tensor]:
        """Unclipped gradient of each unit among examples ``rows`` ({name: (U, ...)}, units in order of first
        appearance in ``unit_ids``) and those examples' losses (len(rows),)."""
        raise NotImplementedError

    def clipped_grad_sum(self, *batch, clip_norm: float, group_ids: Optional[Sequence] = None,
                         max_rows: Optional[int] = None) -> Tuple[Grads, ClipStats]:
        """Sum over units of the clipped per-unit gradient (no noise), computed in passes of at most ``max_rows``
        examples (memory; a unit is never split; None: one pass). Handles an empty batch (zeros)."""
        total = {n: torch.zeros_like(p) for n, p in self.trainable().items()}
        B, lengths = self._rows(batch)
        if B == 0:
            return total, ClipStats(torch.zeros(0), torch.zeros(0), torch.zeros(0), 0)
        gids = list(range(B)) if group_ids is None else list(group_ids)
        norms, factors, losses, nonfinite = [], [], torch.zeros(B), 0
        for rows in unit_chunks(gids, max_rows or B, lengths):
            per, l = self._chunk_unit_grads(batch, rows, [gids[i] for i in rows])
            per, bad = _zero_nonfinite(per)
            s, nrm, fac = clip_and_sum(per, clip_norm)
            for n in total:
                total[n] += s[n]
            norms.append(nrm.cpu())
            factors.append(fac.cpu())
            losses[rows] = l.detach().float().cpu()
            nonfinite += bad
        norms_all = torch.cat(norms)
        return total, ClipStats(losses, norms_all, torch.cat(factors), int(norms_all.numel()), nonfinite)

    def noisy_grad(self, *batch, clip_norm: float, noise_multiplier: float, expected_batch_size: float,
                   group_ids: Optional[Sequence] = None, max_rows: Optional[int] = None,
                   generator: Optional[torch.Generator] = None) -> Tuple[Grads, ClipStats]:
        """(sum of clipped unit gradients + N(0, (sigma C)^2)) / expected_batch_size, with its stats."""
        total, stats = self.clipped_grad_sum(*batch, clip_norm=clip_norm, group_ids=group_ids, max_rows=max_rows)
        return add_noise(total, clip_norm, noise_multiplier, expected_batch_size, generator), stats

    def dp_step_grads(self, *batch, **dp) -> ClipStats:
        """``noisy_grad`` written into ``param.grad`` (None for frozen parameters), ready for optimizer.step."""
        g, stats = self.noisy_grad(*batch, **dp)
        set_grads(self.model, g)
        return stats


class PerExampleGradients(UnitClippedGradients):
    """Per-example / per-unit gradients of an ESPnet transducer model, clipping, and the Gaussian mechanism.

    Args:
        model: an ``ESPnetASRTransducerModel`` fixed by ``make_dp_exact`` (``allow_unfixed=True`` only for tests).
        method: "vmap" (fast; transducer and auxiliary CTC losses) or "loop" (any supported config).
        chunk_size: vmap chunk size (None: whole batch at once; smaller saves memory).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        method: str = "vmap",
        chunk_size: Optional[int] = None,
        allow_unfixed: bool = False,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not allow_unfixed and not is_dp_exact(model):
            raise ValueError("call espnet_pate.dpsgd.model_fixes.make_dp_exact(model) first")
        if method == "vmap":
            if getattr(model, "use_auxiliary_lm_loss", False):
                raise ValueError("method='vmap' has no auxiliary LM loss; use method='loop'")
            for part in ("frontend", "normalize", "specaug"):
                mod = getattr(model, part, None)
                if mod is not None and any(p.requires_grad for p in mod.parameters()):
                    raise ValueError(f"method='vmap' needs a parameter-free {part}; use method='loop'")
        self.model = model
        self.method = method
        self.chunk_size = chunk_size
        self._loss_module = PerExampleLoss(model)

    # ---------------------------------------------------------------------------------- utilities
    def _release_cached_tensors(self) -> None:
        """ESPnet's attention keeps ``self.attn`` (a graph tensor; under vmap an escaped one): drop it."""
        for mod in self.model.modules():
            if torch.is_tensor(getattr(mod, "attn", None)):
                mod.attn = None

    # ------------------------------------------------------------------------------ vmap method
    def _vmap_example_grads(self, speech, speech_lengths, text, text_lengths) -> Tuple[Grads, torch.Tensor]:
        m = self.model
        with torch.no_grad():
            feats, feats_lens = per_example_feats(m, speech, speech_lengths)
            enc_lens = subsampled_lengths(m.encoder.embed, feats_lens)
        if bool((enc_lens < 1).any()):
            bad = (enc_lens < 1).nonzero().flatten().tolist()
            raise ValueError(f"examples {bad} are too short for the encoder's subsampling (filter them out)")
        keep_blocks = None
        blocks = m.encoder.encoders
        if m.training and getattr(blocks, "blockdrop_rate", 0.0) > 0:
            u = torch.rand(len(blocks.blocks))
            u[-1] = 1.0
            keep_blocks = [bool(u[i] >= blocks.blockdrop_rate * blocks.blockdrop_decay * i) for i in range(len(u))]

        params = {f"model.{n}": p.detach() for n, p in m.named_parameters() if p.requires_grad}
        frozen = {f"model.{n}": p.detach() for n, p in m.named_parameters() if not p.requires_grad}
        buffers = {f"model.{n}": b for n, b in m.named_buffers()}
        lm = self._loss_module

        def loss_fn(p, f, fl, t, tl):
            return functional_call(lm, {**p, **frozen, **buffers}, (f, fl, t, tl), {"keep_blocks": keep_blocks})

        fn = vmap(grad_and_value(loss_fn), in_dims=(None, 0, 0, 0, 0), randomness="different",
                  chunk_size=self.chunk_size)
        try:
            grads, losses = fn(params, feats, feats_lens, text, text_lengths)
        finally:
            self._release_cached_tensors()
        return {n[len("model."):]: g for n, g in grads.items()}, losses.detach()

    # ------------------------------------------------------------------------------ loop method
    def _unit_grad_loop(self, speech, speech_lengths, text, text_lengths, rows) -> Tuple[Grads, torch.Tensor]:
        """Gradient of the summed loss of examples ``rows`` (one unit), by the model's own forward."""
        m = self.model
        ps = self.trainable()
        sl = speech_lengths[rows]
        tl = text_lengths[rows]
        sp = speech[rows][:, : int(sl.max())]
        tx = text[rows][:, : max(int(tl.max()), 1)]
        try:
            loss, _stats, _w = m(sp, sl, tx, tl)
            # the model's loss is the batch mean (transducer loss sum / B + auxiliary losses / B): scale to a sum
            total = loss * len(rows)
            gs = torch.autograd.grad(total, list(ps.values()), allow_unused=True)
        finally:
            self._release_cached_tensors()
        out = {n: (g if g is not None else torch.zeros_like(p)) for (n, p), g in zip(ps.items(), gs)}
        return out, total.detach().reshape(())

    # --------------------------------------------------------------------------------- public API
    def per_example_grads(self, speech, speech_lengths, text, text_lengths) -> Tuple[Grads, torch.Tensor]:
        """Per-example gradients {name: (B, *param.shape)} and per-example losses (B,)."""
        if self.method == "vmap":
            return self._vmap_example_grads(speech, speech_lengths, text, text_lengths)
        per, losses = [], []
        for i in range(speech.size(0)):
            g, l = self._unit_grad_loop(speech, speech_lengths, text, text_lengths, torch.tensor([i]))
            per.append(g)
            losses.append(l)
        return {n: torch.stack([g[n] for g in per]) for n in per[0]}, torch.stack(losses)

    def unit_grads(self, speech, speech_lengths, text, text_lengths, group_ids: Optional[Sequence] = None
                   ) -> Tuple[Grads, torch.Tensor]:
        """Unclipped gradient of each unit ({name: (U, ...)}, units in order of first appearance) and per-example
        losses (B,; per-unit means with the loop method)."""
        idx, n_units = unit_index(group_ids, int(speech.size(0)))
        if self.method == "vmap":
            per, losses = self._vmap_example_grads(speech, speech_lengths, text, text_lengths)
            if n_units != len(idx):
                per = {n: g.new_zeros((n_units,) + g.shape[1:]).index_add_(0, idx.to(g.device), g)
                       for n, g in per.items()}
            return per, losses
        units, losses = [], torch.zeros(len(idx))
        for u in range(n_units):
            rows = (idx == u).nonzero().flatten()
            g, l = self._unit_grad_loop(speech, speech_lengths, text, text_lengths, rows)
            units.append(g)
            losses[rows] = float(l) / len(rows)
        return {n: torch.stack([g[n] for g in units]) for n in units[0]}, losses

    def _rows(self, batch: tuple) -> Tuple[int, Sequence[int]]:
        speech, speech_lengths = batch[0], batch[1]
        return (0, []) if speech is None else (int(speech.size(0)), speech_lengths.tolist())

    def _chunk_unit_grads(self, batch: tuple, rows: List[int], unit_ids: List) -> Tuple[Grads, torch.Tensor]:
        speech, speech_lengths, text, text_lengths = batch
        idx = torch.tensor(rows, dtype=torch.long, device=speech.device)
        sl, tl = speech_lengths[idx], text_lengths[idx]
        return self.unit_grads(speech[idx][:, : int(sl.max())], sl, text[idx][:, : max(int(tl.max()), 1)], tl,
                               unit_ids)
