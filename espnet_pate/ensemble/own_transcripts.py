"""Every teacher's own greedy 1-best transcript of public utterances, all teachers and utterances at once.

The thresholded plurality (espnet_pate.privacy.plurality) counts whole strings, one per teacher, so each teacher
decodes on its own: its own frame pointer, its own prefix and decoder state. The K x B decoders step together
(one joint-network call per step for all of them); a teacher's hypothesis depends on its own weights only.
Greedy RNN-T search with ``max_symbols_per_frame`` as in lockstep.py: with one teacher it is exactly the
lock-step decoder's output under a noise-free vote (tested).
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch

from espnet_pate.ensemble.lockstep import start_batch


@torch.no_grad()
def greedy_each(ensemble, encs: Sequence[torch.Tensor], max_symbols_per_frame: int = 5) -> List[List[List[int]]]:
    """Token ids [utterance][teacher] from the encoder outputs ``encs`` (each [K, T_b, D])."""
    if max_symbols_per_frame < 1:
        raise ValueError("max_symbols_per_frame must be >= 1")
    if not encs:
        return []
    ens, K, B = ensemble, ensemble.num_teachers, len(encs)
    lengths, enc_proj, state, dec_proj = start_batch(ens, encs)  # enc_proj [K, B, T, J], dec_proj [K, B, J]
    blank = ens.blank_id
    t = torch.zeros(K, B, dtype=torch.long, device=enc_proj.device)
    sym = torch.zeros_like(t)
    T = lengths.to(enc_proj.device).expand(K, B)
    hyps: List[List[List[int]]] = [[[] for _ in range(K)] for _ in range(B)]
    active = t < T
    while bool(active.any()):
        frame = t.clamp(max=enc_proj.shape[2] - 1)
        e = enc_proj.gather(2, frame[:, :, None, None].expand(K, B, 1, enc_proj.shape[-1])).squeeze(2)
        best = ens.joint.logits(e, dec_proj).argmax(dim=-1)  # [K, B]; ties to the lowest index
        emit = active & (best != blank)
        sym = torch.where(emit, sym + 1, torch.zeros_like(sym))
        advance = active & ((best == blank) | (sym >= max_symbols_per_frame))
        sym = torch.where(advance, torch.zeros_like(sym), sym)
        t = t + advance.long()
        if bool(emit.any()):
            for k, b in torch.nonzero(emit).tolist():
                hyps[b][k].append(int(best[k, b]))
            h, c = state
            out, (h_new, c_new) = ens.decoder.step(torch.where(emit, best, torch.full_like(best, blank)), state)
            keep = emit[None, :, :, None]
            state = (torch.where(keep, h_new, h), None if c is None else torch.where(keep, c_new, c))
            dec_proj = torch.where(emit[:, :, None], ens.joint.project_decoder(out), dec_proj)
        active = t < T
    return hyps


def agreement_counts(transcripts: Sequence[Sequence[str]]) -> np.ndarray:
    """How many teachers produced each query's most frequent (normalised, non-empty) string: an operator
    diagnostic of sensitive data when the teachers are real, a public planning figure when they are shadows."""
    from collections import Counter

    from espnet_pate.privacy.plurality import normalise_transcript

    out = []
    for query in transcripts:
        counts = Counter(s for s in map(normalise_transcript, query) if s)
        out.append(max(counts.values()) if counts else 0)
    return np.asarray(out, dtype=np.int64)
