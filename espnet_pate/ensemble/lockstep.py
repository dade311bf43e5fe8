"""Lock-step noisy greedy decoding of RNN-T teachers (PRIVACY.md, "ASR-specific aggregation", token level).

All K teachers decode one utterance together. At every step each teacher scores the same encoder frame t and
the same released prefix (its own decoder state, fed with the released labels), and votes:

* hard votes (default): its argmax over blank + tokens (ties to the lowest index, ``torch.argmax``);
* soft votes: its posterior over blank + tokens; the histogram is their sum.

The histogram over the fixed, public class set (the token list; blank is class 0) goes through the aggregator,
and the released symbol drives every teacher: blank moves to frame t + 1; a token is appended to the prefix and
every teacher's decoder state advances with it. After ``max_symbols_per_frame`` tokens on one frame the
decoder moves on to the next frame without a query (a rule on released outputs only, so it costs nothing); every
query that runs is logged and counted.

The aggregator returns ``REFUSED`` for a query it does not answer: Confident-GNMax's threshold (the utterance is
dropped at that first refused query; what it spent so far stays spent) or an exhausted ``PrivacyBudget`` (the
whole run stops: utterances in progress are dropped, later ones are never started).

Batching: teachers are batched everywhere (``TeacherEnsemble``); utterances are decoded ``batch_size`` at a time,
each with its own frame pointer and prefix. With a budget, at most one batch of partly decoded utterances is lost
when the budget runs out, so keep ``batch_size`` moderate. Encoder outputs are computed per utterance, as
ESPnet's ``Speech2Text`` does, so padding never changes a teacher's scores. At large K a step's cost is reading
the teachers' decoder weights (``LockstepHead`` reads each once per step), so more utterances per batch share it.

With one teacher (or K identical ones) and a noise-free aggregator this is exact greedy RNN-T decoding with
ESPnet's own scores (tested against a reference built from ESPnet's modules). The stock ``Speech2Text`` with
``beam_size: 1`` is not greedy: ESPnet's default beam search keeps blank-extended hypotheses from earlier steps of
the frame and returns to one when the greedy path's score falls below it, and has no cap on symbols per frame.
The two agree where the model is sure (tested on a fitted toy model); on weak teachers they differ, and there the
greedy output has had the higher RNN-T likelihood (the stock search losing mostly to deletions).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from espnet_pate.ensemble.lockstep_head import LockstepHead
from espnet_pate.privacy.budget import PrivacyBudget
from espnet_pate.privacy.mechanisms import REFUSED, Aggregation
from espnet_pate.privacy.votes import hard_votes, plurality

log = logging.getLogger(__name__)

# Utterance outcomes
LABELLED = "labelled"  # every query answered; the pseudo-transcript is released
REFUSED_THRESHOLD = "refused"  # dropped at its first query the aggregator refused (Confident-GNMax)
STOPPED_BUDGET = "budget"  # in progress when the budget ran out: dropped
NOT_REACHED = "not_reached"  # never started (budget spent before its turn)
TOO_SHORT = "too_short"  # too short for the encoder's subsampling: never queried
NO_CANDIDATE = "no_candidate"  # utterance level: the noisy vote chose an empty candidate slot


class NoiselessPlurality:
    """Plurality vote without noise: NOT private. For tests and benchmarks only (the driver refuses it)."""

    mechanism = "none"
    seed_fixed = True

    def __call__(self, votes, budget: Optional[PrivacyBudget] = None) -> Aggregation:
        if budget is not None:
            raise ValueError("a noise-free vote has no privacy cost to budget")
        labels = np.asarray(plurality(np.asarray(votes, dtype=float)), dtype=np.int64)
        return Aggregation(labels, np.ones(labels.shape, dtype=bool))

    def describe(self) -> dict:
        return {"mechanism": "none", "params": {}, "seed": None, "seed_fixed": True, "not_for_release": True}


@dataclass
class QueryLog:
    """Every query that ran, in order: its histogram, the utterance it belongs to, what was released."""

    num_classes: int
    votes: List[np.ndarray] = field(default_factory=list)
    utt: List[np.ndarray] = field(default_factory=list)
    answered: List[np.ndarray] = field(default_factory=list)
    released: List[np.ndarray] = field(default_factory=list)

    def add(self, votes: np.ndarray, utt: np.ndarray, answered: np.ndarray, released: np.ndarray) -> None:
        if len(utt):
            self.votes.append(np.asarray(votes, dtype=float))
            self.utt.append(np.asarray(utt, dtype=np.int64))
            self.answered.append(np.asarray(answered, dtype=bool))
            self.released.append(np.asarray(released, dtype=np.int64))

    def _cat(self, parts, dtype, shape=(0,)):
        return np.concatenate(parts) if parts else np.zeros(shape, dtype=dtype)

    @property
    def all_votes(self) -> np.ndarray:
        return self._cat(self.votes, float, (0, self.num_classes))

    @property
    def all_utt(self) -> np.ndarray:
        return self._cat(self.utt, np.int64)

    @property
    def all_answered(self) -> np.ndarray:
        return self._cat(self.answered, bool)

    @property
    def all_released(self) -> np.ndarray:
        return self._cat(self.released, np.int64)

    @property
    def num_queries(self) -> int:
        return int(sum(len(u) for u in self.utt))


@dataclass
class UtteranceResult:
    utt_id: str
    status: str
    token_ids: List[int] = field(default_factory=list)
    queries: int = 0
    frames: int = 0


@dataclass
class DecodingResult:
    utterances: Dict[str, UtteranceResult]
    queries: QueryLog
    budget_exhausted: bool = False

    def labelled(self) -> Dict[str, List[int]]:
        return {u: r.token_ids for u, r in self.utterances.items() if r.status == LABELLED}

    def status_counts(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for r in self.utterances.values():
            out[r.status] = out.get(r.status, 0) + 1
        return out


def encoder_of(ensemble, load: Callable[[str], np.ndarray]):
    """utts -> their encoder outputs (``TeacherEnsemble.encode_batch`` on the loaded waveforms)."""
    return lambda utts: ensemble.encode_batch([load(u) for u in utts])


def padded_projection(ensemble, encs: Sequence[torch.Tensor]):
    """(lengths [B], projected encoder outputs [K, B, T, J] zero-padded) of a batch of utterances."""
    K, B = ensemble.num_teachers, len(encs)
    lengths = torch.tensor([e.shape[1] for e in encs])
    enc = encs[0].new_zeros(K, B, int(lengths.max()), encs[0].shape[-1])
    for b, e in enumerate(encs):
        enc[:, b, : e.shape[1]] = e
    return lengths, ensemble.joint.project_encoder(enc)


def start_batch(ensemble, encs: Sequence[torch.Tensor]):
    """(lengths [B], projected encoder outputs [K, B, T, J] zero-padded, decoder state after blank, projected
    decoder output [K, B, J]): where every greedy search over a batch of utterances starts."""
    ens, B = ensemble, len(encs)
    lengths, enc_proj = padded_projection(ens, encs)
    state = ens.decoder.init_state(B)
    out, state = ens.decoder.step(torch.full((B,), ens.blank_id, dtype=torch.long, device=enc_proj.device), state)
    return lengths, enc_proj, state, ens.joint.project_decoder(out)


def _aggregate(aggregator, votes: np.ndarray, budget: Optional[PrivacyBudget]):
    """(Aggregation, number of leading rows that ran). Rows after those were refused by the budget unrun."""
    if budget is None:
        return aggregator(votes), votes.shape[0]
    before = budget.queries_run
    agg = aggregator(votes, budget=budget)
    return agg, budget.queries_run - before


class LockstepDecoder:
    """``LockstepDecoder(ensemble, aggregator, vote="hard", max_symbols_per_frame=5, batch_size=16)``;
    ``decode(utt_ids, load, budget=None)`` with ``load(utt_id) -> waveform``. ``aggregator(votes[, budget])``
    is a privacy mechanism (espnet_pate.privacy.mechanisms) or ``NoiselessPlurality`` (tests only)."""

    def __init__(self, ensemble, aggregator: Callable, vote: str = "hard", max_symbols_per_frame: int = 5,
                 batch_size: int = 16):
        if vote not in ("hard", "soft"):
            raise ValueError(f"vote must be 'hard' or 'soft', got {vote!r}")
        if max_symbols_per_frame < 1 or batch_size < 1:
            raise ValueError("max_symbols_per_frame and batch_size must be >= 1")
        self.ens, self.aggregator, self.vote = ensemble, aggregator, vote
        self.max_symbols_per_frame, self.batch_size = int(max_symbols_per_frame), int(batch_size)
        self.head = LockstepHead(ensemble)

    def votes(self, logits: torch.Tensor) -> np.ndarray:
        """Histograms [A, V] from the teachers' logits [K, A, V]."""
        if self.vote == "hard":
            return hard_votes(torch.argmax(logits, dim=-1).T.cpu().numpy(), logits.shape[-1])
        post = torch.softmax(logits.double(), dim=-1).sum(dim=0)
        return post.cpu().numpy()

    @torch.no_grad()
    def decode(self, utt_ids: Sequence[str], load: Callable[[str], np.ndarray],
               budget: Optional[PrivacyBudget] = None,
               encode: Optional[Callable[[Sequence[str]], List[Optional[torch.Tensor]]]] = None) -> DecodingResult:
        """Decode ``utt_ids`` in order; ``load(u)`` gives the waveform. ``encode(utts)``, if given, gives the
        teachers' encoder outputs [K, T, D] of a batch (None: too short) instead, e.g. from a cache."""
        encode = encode or encoder_of(self.ens, load)
        results = {u: UtteranceResult(u, NOT_REACHED) for u in utt_ids}
        qlog = QueryLog(self.ens.vocab_size)
        order = list(utt_ids)
        index = {u: i for i, u in enumerate(order)}
        exhausted = False
        for start in range(0, len(order), self.batch_size):
            if budget is not None and budget.exhausted:
                exhausted = True
                break
            batch, encs = [], []
            chunk = order[start:start + self.batch_size]
            for u, enc in zip(chunk, encode(chunk)):
                if enc is None:
                    results[u].status = TOO_SHORT
                    continue
                batch.append(u)
                encs.append(enc)
            if batch:
                exhausted = self._decode_batch(batch, encs, index, results, qlog, budget) or exhausted
            if exhausted:
                break
        if budget is not None and budget.exhausted:
            exhausted = True
        return DecodingResult(results, qlog, exhausted)

    def _decode_batch(self, batch, encs, index, results, qlog, budget) -> bool:
        """Decode one batch of utterances together; True when the budget stopped the run."""
        ens, head = self.ens, self.head
        B = len(batch)
        lengths, enc_proj = padded_projection(ens, encs)
        head.start(B, ens.blank_id)
        enc_flat = enc_proj.reshape(enc_proj.shape[0], -1, enc_proj.shape[-1])  # [K, B * T, J]: frame b * T + t
        blank = ens.blank_id
        t = np.zeros(B, dtype=np.int64)
        T = lengths.numpy()
        sym = np.zeros(B, dtype=np.int64)
        active = np.ones(B, dtype=bool)
        hyps: List[List[int]] = [[] for _ in range(B)]
        nq = np.zeros(B, dtype=np.int64)
        utt_index = np.array([index[u] for u in batch], dtype=np.int64)
        for b, u in enumerate(batch):
            results[u].frames = int(lengths[b])
        exhausted = False
        while active.any():
            idx = np.flatnonzero(active)
            tidx = torch.as_tensor(idx, device=enc_proj.device)
            frames = torch.as_tensor(idx * enc_proj.shape[2] + t[idx], device=enc_proj.device)
            logits = ens.joint.logits(enc_flat.index_select(1, frames), head.dec_proj.index_select(1, tidx))  # [K,A,V]
            if not bool(torch.isfinite(logits.sum())):  # any NaN or inf makes the sum non-finite
                bad = sorted({ens.names[k] for k in torch.nonzero(~torch.isfinite(logits))[:, 0].tolist()})
                raise FloatingPointError(f"non-finite scores from {bad} (a broken checkpoint?)")
            votes = self.votes(logits)
            agg, ran = _aggregate(self.aggregator, votes, budget)
            labels = np.asarray(agg.labels).reshape(-1)[:ran]
            answered = np.asarray(agg.answered).reshape(-1)
            rows = idx[:ran]
            qlog.add(votes[:ran], utt_index[rows], answered[:ran], labels)
            nq[rows] += 1
            if ran < len(idx):  # the budget refused the rest: the run stops here
                exhausted = True
            stopped, refused = idx[ran:], rows[labels == REFUSED]
            for b in stopped:
                results[batch[b]].status = STOPPED_BUDGET
            for b in refused:
                results[batch[b]].status = REFUSED_THRESHOLD
            active[stopped] = active[refused] = False
            emit = (labels != REFUSED) & (labels != blank)
            done = rows[labels == blank]  # blank moves to the next frame
            if emit.any():
                erows, elabels = rows[emit], labels[emit]
                for b, y in zip(erows.tolist(), elabels.tolist()):
                    hyps[b].append(y)
                sym[erows] += 1
                done = np.concatenate([done, erows[sym[erows] >= self.max_symbols_per_frame]])
                head.step(torch.as_tensor(erows, device=enc_proj.device),
                          torch.as_tensor(elabels, dtype=torch.long, device=enc_proj.device))
            t[done] += 1
            sym[done] = 0
            for b in np.flatnonzero(active & (t >= T)):
                results[batch[b]].status = LABELLED
                active[b] = False
            if exhausted or (budget is not None and budget.exhausted and active.any()):
                for b in np.flatnonzero(active):
                    results[batch[b]].status = STOPPED_BUDGET
                active[:] = False
                exhausted = True
        for b, u in enumerate(batch):
            results[u].queries = int(nq[b])
            results[u].token_ids = hyps[b] if results[u].status == LABELLED else []
        return exhausted
