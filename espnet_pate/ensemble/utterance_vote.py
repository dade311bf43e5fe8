"""Utterance-level PATE voting over candidate transcripts from public information (PRIVACY.md, utterance level).

For each utterance:

1. Candidates come from the public pretrained model alone: its n-best list from ESPnet's ``Speech2Text`` beam
   search (``nbest`` hypotheses, duplicates of one text dropped, order kept). The class set of the query is
   ``nbest`` slots: the candidates, then empty slots if there are fewer. It depends on public data only.
2. Each teacher scores every candidate by its RNN-T log-likelihood log P(y | x) (the full sum over alignments:
   the teacher's encoder, decoder and joint network, ``rnnt_loss_logspace`` with no reduction), all teachers
   and candidates in one batch.
3. Hard votes: each teacher votes for its highest-scoring candidate (ties to the lowest index, i.e. the
   public model's better-ranked one). Soft votes: each teacher's softmax over its candidates' log-likelihoods.
4. The histogram over the ``nbest`` slots goes through the aggregator: one query per utterance. The released
   slot's candidate is the pseudo-transcript; an empty slot (possible only through noise) labels nothing.

An utterance with a single distinct candidate needs no query: its label is the public model's output, which
does not depend on the sensitive data, so it is released at no privacy cost (``free_single_candidate``).
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from espnet_pate.asr.rnnt_loss import rnnt_loss_logspace
from espnet_pate.ensemble.lockstep import (
    LABELLED,
    NO_CANDIDATE,
    NOT_REACHED,
    REFUSED_THRESHOLD,
    STOPPED_BUDGET,
    TOO_SHORT,
    DecodingResult,
    QueryLog,
    UtteranceResult,
    _aggregate,
    encoder_of,
)
from espnet_pate.privacy.budget import PrivacyBudget
from espnet_pate.privacy.mechanisms import REFUSED
from espnet_pate.privacy.votes import hard_votes

log = logging.getLogger(__name__)


def load_public_nbest(model_dir, nbest: int, beam_size: Optional[int] = None, device: str = "cpu"):
    """The stock ``Speech2Text`` of the public model, set up to return ``nbest`` hypotheses."""
    from espnet_pate.asr.decode import load_speech2text

    return load_speech2text(model_dir, device=device, beam_size=max(int(beam_size or nbest), nbest), nbest=nbest)


def public_candidates(speech2text, speech, nbest: int) -> List[List[int]]:
    """Distinct candidates (token ids, blanks removed) from the public model's n-best, best first."""
    from espnet2.asr_transducer.utils import TooShortUttError

    try:
        hyps = speech2text(speech)
    except TooShortUttError:
        return []
    out: List[List[int]] = []
    seen = set()
    for text, _, token_int, _ in speech2text.hypotheses_to_results(hyps):
        key = text if text is not None else tuple(token_int)
        if key in seen:
            continue
        seen.add(key)
        out.append([int(t) for t in token_int])
        if len(out) == nbest:
            break
    return out


@torch.no_grad()
def candidate_log_likelihoods(ensemble, enc: torch.Tensor, candidates: Sequence[Sequence[int]],
                              max_elements: int = 20_000_000) -> np.ndarray:
    """log P(candidate | utterance) for every teacher: [K, C], from encoder outputs ``enc`` [K, T, D].

    The lattice [K, C, T, U+1, V] is computed in chunks of teachers so that one chunk stays under
    ``max_elements`` values.
    """
    K, T = enc.shape[0], enc.shape[1]
    C = len(candidates)
    if C == 0:
        return np.zeros((K, 0))
    U = max(len(c) for c in candidates)
    blank = ensemble.blank_id
    dec_in = torch.full((C, U + 1), blank, dtype=torch.long)  # blank first, as ESPnet's decoder input
    targets = torch.zeros((C, max(U, 1)), dtype=torch.long)
    for i, c in enumerate(candidates):
        if c:
            dec_in[i, 1: len(c) + 1] = torch.tensor(c)
            targets[i, : len(c)] = torch.tensor(c)
    dev = enc.device
    dec_in, targets = dec_in.to(dev), targets.to(dev)
    t_len = torch.full((C,), T, dtype=torch.long, device=dev)
    u_len = torch.tensor([len(c) for c in candidates], dtype=torch.long, device=dev)
    dec_proj = ensemble.joint.project_decoder(ensemble.decoder.sequence(dec_in))  # [K, C, U+1, J]
    enc_proj = ensemble.joint.project_encoder(enc)  # [K, T, J]
    per_teacher = C * T * (U + 1) * max(ensemble.vocab_size, dec_proj.shape[-1])
    step = max(1, int(max_elements // max(per_teacher, 1)))
    out = []
    for k0 in range(0, K, step):
        k1 = min(K, k0 + step)
        logits = ensemble.joint.logits(enc_proj[k0:k1, None, :, None, :], dec_proj[k0:k1, :, None, :, :],
                                       teachers=slice(k0, k1))
        kk = k1 - k0
        loss = rnnt_loss_logspace(logits.reshape(kk * C, T, U + 1, -1), targets.repeat(kk, 1), t_len.repeat(kk),
                                  u_len.repeat(kk), blank=blank, reduction="none")
        out.append(-loss.reshape(kk, C).double())
    return torch.cat(out).cpu().numpy()


class UtteranceVoter:
    """``UtteranceVoter(ensemble, public_speech2text, aggregator, nbest=8, vote="hard", batch_size=16)``;
    ``decode(utt_ids, load, budget=None)`` gives a ``DecodingResult`` with one query per voted utterance."""

    def __init__(self, ensemble, public_speech2text, aggregator: Callable, nbest: int = 8, vote: str = "hard",
                 batch_size: int = 16, free_single_candidate: bool = True):
        if vote not in ("hard", "soft"):
            raise ValueError(f"vote must be 'hard' or 'soft', got {vote!r}")
        if nbest < 2:
            raise ValueError("utterance-level voting needs nbest >= 2 candidates")
        self.ens, self.public, self.aggregator = ensemble, public_speech2text, aggregator
        self.nbest, self.vote, self.batch_size = int(nbest), vote, int(batch_size)
        self.free_single_candidate = free_single_candidate

    def votes(self, loglik: np.ndarray) -> np.ndarray:
        """Histogram [nbest] from the teachers' log-likelihoods [K, C]."""
        K, C = loglik.shape
        hist = np.zeros(self.nbest)
        if self.vote == "hard":
            hist[:C] = hard_votes(np.argmax(loglik, axis=1)[None, :], C)[0]
        else:
            z = loglik - loglik.max(axis=1, keepdims=True)
            p = np.exp(z)
            hist[:C] = (p / p.sum(axis=1, keepdims=True)).sum(axis=0)
        return hist

    def decode(self, utt_ids: Sequence[str], load: Callable[[str], np.ndarray],
               budget: Optional[PrivacyBudget] = None,
               encode: Optional[Callable[[Sequence[str]], List[Optional[torch.Tensor]]]] = None,
               candidates: Optional[Callable[[str], List[List[int]]]] = None,
               loglik: Optional[Callable[[str, torch.Tensor, List[List[int]]], np.ndarray]] = None) -> DecodingResult:
        """One query per utterance, in order. ``encode(utts)`` / ``candidates(u)`` / ``loglik(u, enc, cands)``
        override the teachers' encoder, the public n-best and the teachers' scores of the candidates (e.g.
        cached: all are deterministic; the noise comes after, in the aggregator)."""
        encode = encode or encoder_of(self.ens, load)
        candidates = candidates or (lambda u: public_candidates(self.public, load(u), self.nbest))
        loglik = loglik or (lambda u, enc, cands: candidate_log_likelihoods(self.ens, enc, cands))

        results = {u: UtteranceResult(u, NOT_REACHED) for u in utt_ids}
        qlog = QueryLog(self.nbest)
        order = list(utt_ids)
        index = {u: i for i, u in enumerate(order)}
        exhausted = False
        self.candidates: Dict[str, List[List[int]]] = {}
        for start in range(0, len(order), self.batch_size):
            if budget is not None and budget.exhausted:
                exhausted = True
                break
            rows, hists = [], []
            chunk = order[start:start + self.batch_size]
            for u, enc in zip(chunk, encode(chunk)):
                cands = candidates(u)
                self.candidates[u] = cands
                if enc is None:
                    results[u].status = TOO_SHORT
                    continue
                results[u].frames = int(enc.shape[1])
                if not cands:
                    results[u].status = NO_CANDIDATE
                    continue
                if len(cands) == 1 and self.free_single_candidate:
                    results[u].status, results[u].token_ids = LABELLED, list(cands[0])
                    continue
                hists.append(self.votes(loglik(u, enc, cands)))
                rows.append(u)
            if not rows:
                continue
            votes = np.stack(hists)
            agg, ran = _aggregate(self.aggregator, votes, budget)
            labels, answered = np.asarray(agg.labels).reshape(-1), np.asarray(agg.answered).reshape(-1)
            qlog.add(votes[:ran], np.array([index[u] for u in rows[:ran]]), answered[:ran], labels[:ran])
            for i, u in enumerate(rows):
                r = results[u]
                if i >= ran:
                    r.status = STOPPED_BUDGET
                    exhausted = True
                    continue
                r.queries = 1
                if labels[i] == REFUSED:
                    r.status = REFUSED_THRESHOLD
                elif labels[i] >= len(self.candidates[u]):
                    r.status = NO_CANDIDATE
                else:
                    r.status, r.token_ids = LABELLED, list(self.candidates[u][labels[i]])
            if exhausted:
                break
        if budget is not None and budget.exhausted:
            exhausted = True
        return DecodingResult(results, qlog, exhausted)
