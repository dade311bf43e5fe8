"""Utterance-level voting: teachers' RNN-T log-likelihoods of public candidates, one query per utterance."""

import numpy as np
import pytest
import torch

pytest.importorskip("espnet2")

from espnet_pate.asr.rnnt_loss import RNNTLoss  # noqa: E402
from espnet_pate.ensemble.lockstep import LABELLED, NO_CANDIDATE, NoiselessPlurality  # noqa: E402
from espnet_pate.ensemble.teachers import TeacherEnsemble  # noqa: E402
from espnet_pate.ensemble.toy import build_toy_model, perturbed_copy, toy_utterances, write_toy_setup  # noqa: E402
from espnet_pate.ensemble.utterance_vote import (  # noqa: E402
    UtteranceVoter,
    candidate_log_likelihoods,
    load_public_nbest,
    public_candidates,
)
from espnet_pate.privacy.mechanisms import Aggregation  # noqa: E402

CANDIDATES = [[4, 5, 2, 6], [4, 5], [], [7, 7, 7, 8, 9]]


@pytest.fixture(scope="module")
def models():
    base = build_toy_model(seed=1)
    return [perturbed_copy(base, seed=i, scale=0.3) for i in range(3)]


@pytest.fixture(scope="module")
def utts():
    return {u: w for u, (w, _, _) in toy_utterances(3, seed=7).items()}


def test_log_likelihoods_equal_espnet_transducer_loss(models, utts):
    ens = TeacherEnsemble(iter(models))
    wave = next(iter(utts.values()))
    ll = candidate_log_likelihoods(ens, ens.encode(wave), CANDIDATES, max_elements=5000)  # forces chunking
    assert ll.shape == (3, len(CANDIDATES))
    for k, m in enumerate(models):
        m.criterion_transducer = RNNTLoss(blank_id=0)
        for c, cand in enumerate(CANDIDATES):
            if not cand:
                continue  # ESPnet's loss needs a label
            with torch.no_grad():
                x = torch.as_tensor(wave)[None]
                loss = m(x, torch.tensor([x.shape[1]]), torch.tensor([cand]), torch.tensor([len(cand)]))[0]
            np.testing.assert_allclose(ll[k, c], -float(loss), rtol=1e-5)
    # the empty candidate: all blanks, log P = sum over frames of log P(blank | t, u=0)
    with torch.no_grad():
        enc = ens.encode(wave)
        out, _ = ens.decoder.step(torch.tensor([0]), ens.decoder.init_state(1))
        logp = torch.log_softmax(ens.joint.logits(ens.joint.project_encoder(enc), ens.joint.project_decoder(out)),
                                 -1)
    np.testing.assert_allclose(ll[:, 2], logp[..., 0].sum(-1).double().numpy(), rtol=1e-5)


def test_each_teacher_votes_for_its_most_likely_candidate(models, utts):
    ens = TeacherEnsemble(iter(models))
    voter = UtteranceVoter(ens, None, NoiselessPlurality(), nbest=6)
    res = voter.decode(list(utts), utts.get, candidates=lambda u: CANDIDATES)
    votes = res.queries.all_votes
    assert votes.shape == (3, 6) and np.all(votes[:, 4:] == 0)  # empty slots of the 6-slot class set
    assert np.all(votes.sum(axis=1) == 3)
    for i, (u, wave) in enumerate(utts.items()):
        ll = candidate_log_likelihoods(ens, ens.encode(wave), CANDIDATES)
        np.testing.assert_array_equal(votes[i, :4], np.bincount(ll.argmax(axis=1), minlength=4))
        assert res.utterances[u].status == LABELLED
        assert res.utterances[u].token_ids == CANDIDATES[int(np.argmax(votes[i]))]
    soft = UtteranceVoter(ens, None, NoiselessPlurality(), nbest=6, vote="soft").decode(
        list(utts), utts.get, candidates=lambda u: CANDIDATES)
    np.testing.assert_allclose(soft.queries.all_votes.sum(axis=1), 3.0)


def test_single_candidate_is_free_and_an_empty_slot_labels_nothing(models, utts):
    ens = TeacherEnsemble(iter(models))

    class Last:  # a stand-in mechanism that always releases the last slot
        def __call__(self, votes, budget=None):
            n = np.asarray(votes)
            return Aggregation(np.full(n.shape[0], n.shape[1] - 1), np.ones(n.shape[0], bool))

    ids = list(utts)
    cands = {ids[0]: [[4, 5]], ids[1]: CANDIDATES, ids[2]: CANDIDATES[:2]}
    res = UtteranceVoter(ens, None, Last(), nbest=4).decode(ids, utts.get, candidates=cands.get)
    assert res.utterances[ids[0]].status == LABELLED and res.utterances[ids[0]].queries == 0  # public output
    assert res.utterances[ids[1]].token_ids == CANDIDATES[3]
    assert res.utterances[ids[2]].status == NO_CANDIDATE  # slot 3 of 4 is empty for 2 candidates
    assert res.queries.num_queries == 2


def test_public_candidates_are_distinct_and_at_most_nbest(tmp_path):
    toy = write_toy_setup(tmp_path, num_teachers=1, num_utts=2)
    s2t = load_public_nbest(toy["public"], nbest=3, beam_size=4)
    import soundfile

    from espnet_pate.data.kaldi_dir import read_table

    for path in read_table(toy["data"] / "wav.scp").values():
        cands = public_candidates(s2t, soundfile.read(path, dtype="float32")[0], 3)
        assert 1 <= len(cands) <= 3
        assert len({tuple(c) for c in cands}) == len(cands)
        assert all(0 not in c for c in cands)
