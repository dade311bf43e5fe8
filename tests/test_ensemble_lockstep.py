"""Lock-step noisy greedy decoding: equivalence with ESPnet's stock Speech2Text and with a per-teacher reference
loop, ties, the symbols-per-frame cap, Confident-GNMax's drop at the first refusal, the budget stop."""

import signal
from contextlib import contextmanager

import numpy as np
import pytest
import soundfile
import torch

pytest.importorskip("espnet2")

from espnet_pate.data.kaldi_dir import read_table  # noqa: E402
from espnet_pate.ensemble.lockstep import (  # noqa: E402
    LABELLED,
    NOT_REACHED,
    REFUSED_THRESHOLD,
    STOPPED_BUDGET,
    LockstepDecoder,
    NoiselessPlurality,
)
from espnet_pate.ensemble.lockstep_head import LockstepHead  # noqa: E402
from espnet_pate.ensemble.pate_labeling import RunSettings, run_cost  # noqa: E402
from espnet_pate.ensemble.teachers import TeacherEnsemble  # noqa: E402
from espnet_pate.ensemble.toy import (  # noqa: E402
    HEAD_TRAINABLE, build_toy_model, perturbed_copy, reference_encoder, toy_args, toy_utterances, write_toy_setup,
)
from espnet_pate.privacy.accounting import confident_gnmax_cost  # noqa: E402
from espnet_pate.privacy.budget import PrivacyBudget  # noqa: E402
from espnet_pate.privacy.calibration import max_queries  # noqa: E402
from espnet_pate.privacy.mechanisms import REFUSED, ConfidentGNMax, GNMax  # noqa: E402
from espnet_pate.privacy.votes import hard_votes  # noqa: E402

FITTED_UTTS = ["spk0-utt000", "spk1-utt001", "spk0-utt002", "spk1-utt003"]  # what the toy public model saw


@contextmanager
def time_limit(seconds):
    """ESPnet's default beam search has no cap on symbols per frame: fail instead of hanging."""
    def handler(signum, frame):
        raise TimeoutError(f"no result within {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_setup(tmp_path_factory.mktemp("toy"), num_teachers=3, num_utts=6)


@pytest.fixture(scope="module")
def waves(toy):
    wav = read_table(toy["data"] / "wav.scp")
    return {u: soundfile.read(p, dtype="float32")[0] for u, p in wav.items()}


@torch.no_grad()
def reference_lockstep(models, wave, aggregator, max_sym):
    """The algorithm written plainly: a Python loop over teachers with ESPnet's own modules (test only)."""
    encs = [reference_encoder(m, wave) for m in models]
    states, outs = [], []
    for m in models:
        out, st = m.decoder.rnn_forward(m.decoder.embed(torch.tensor([[0]])), m.decoder.init_state(1))
        states.append(st)
        outs.append(out[0])
    t, sym, hyp, hists = 0, 0, [], []
    while t < encs[0].shape[0]:
        votes = [int(torch.argmax(m.joint_network(encs[k][t:t + 1], outs[k]))) for k, m in enumerate(models)]
        hist = hard_votes(np.array([votes]), m.decoder.vocab_size)
        hists.append(hist[0])
        y = int(aggregator(hist).labels[0])
        if y == REFUSED:
            return None, hists
        if y == 0:
            t, sym = t + 1, 0
            continue
        hyp.append(y)
        for k, m in enumerate(models):
            out, states[k] = m.decoder.rnn_forward(m.decoder.embed(torch.tensor([[y]])), states[k])
            outs[k] = out[0]
        sym += 1
        if sym >= max_sym:
            t, sym = t + 1, 0
    return hyp, hists


def test_k1_equals_stock_speech2text_greedy(toy, waves):
    """One teacher, no noise: the stock Speech2Text with beam_size 1 on utterances the model is sure of.

    (ESPnet's beam_size-1 search is a beam search: it may return to an earlier blank hypothesis where the greedy
    path's score falls below it, which happens with unsure models; on the fitted utterances it keeps the greedy
    path. The exact greedy reference below holds on every utterance.)"""
    from espnet2.bin.asr_transducer_inference import Speech2Text

    for d in [toy["public"], *toy["teacher_dirs"]]:
        ens = TeacherEnsemble.from_dirs([d])
        res = LockstepDecoder(ens, NoiselessPlurality(), max_symbols_per_frame=50).decode(list(waves), waves.get)
        s2t = Speech2Text(asr_train_config=str(d / "config.yaml"), asr_model_file=str(d / "valid.loss.ave.pth"),
                          beam_size=1)
        emitted = 0
        for u in FITTED_UTTS:
            with time_limit(60):
                stock = [y for y in s2t(waves[u])[0].yseq if y != 0]
            assert res.utterances[u].token_ids == stock, (d, u)
            emitted += len(stock)
        assert emitted > 0  # the comparison is not between empty outputs
        for u, wave in waves.items():
            ref, _ = reference_lockstep([ens.base], wave, NoiselessPlurality(), 50)
            assert res.utterances[u].token_ids == ref
            assert res.utterances[u].status == LABELLED


def test_identical_teachers_equal_the_single_teacher(toy, waves):
    d = toy["teacher_dirs"][1]
    one = LockstepDecoder(TeacherEnsemble.from_dirs([d]), NoiselessPlurality()).decode(list(waves), waves.get)
    ens = TeacherEnsemble.from_dirs([d, d, d, d])
    assert not ens.teacher_stages  # everything is shared: the encoder runs once
    four = LockstepDecoder(ens, NoiselessPlurality(), batch_size=4).decode(list(waves), waves.get)
    assert four.labelled() == one.labelled()
    assert np.all(four.queries.all_votes.max(axis=1) == 4)
    assert four.queries.num_queries == one.queries.num_queries


def distinct_random_teachers(k=4, scale=0.3, sharpness=4.0, blank_bias=1.0):
    base = build_toy_model(seed=3, sharpness=sharpness, blank_bias=blank_bias)
    return [perturbed_copy(base, seed=40 + i, scale=scale) for i in range(k)]


@pytest.mark.parametrize("sharpness, blank_bias, scale", [(4.0, 1.0, 0.3), (2.0, 1.0, 0.5)])
def test_batched_over_teachers_equals_per_teacher_reference_loop(sharpness, blank_bias, scale):
    seed = 3
    models = distinct_random_teachers(4, scale, sharpness, blank_bias)
    utts = {u: w for u, (w, _, _) in toy_utterances(4, seed=seed).items()}
    ens = TeacherEnsemble(iter(models))
    res = LockstepDecoder(ens, GNMax(1.0, seed=seed), max_symbols_per_frame=3, batch_size=1).decode(list(utts),
                                                                                                 utts.get)
    ref_agg = GNMax(1.0, seed=seed)  # the same noise stream, consumed in the same order (one utterance at a time)
    all_hists = []
    for u, wave in utts.items():
        hyp, hists = reference_lockstep(models, wave, ref_agg, 3)
        assert res.utterances[u].token_ids == hyp
        assert res.utterances[u].queries == len(hists)
        all_hists += hists
    np.testing.assert_array_equal(res.queries.all_votes, np.array(all_hists))
    assert len(set(map(tuple, res.queries.all_votes.max(axis=1, keepdims=True)))) > 1  # teachers do disagree
    # batching utterances together changes nothing without noise
    a = LockstepDecoder(ens, NoiselessPlurality(), max_symbols_per_frame=3, batch_size=1).decode(list(utts), utts.get)
    b = LockstepDecoder(ens, NoiselessPlurality(), max_symbols_per_frame=3, batch_size=3).decode(list(utts), utts.get)
    assert a.labelled() == b.labelled() and a.queries.num_queries == b.queries.num_queries


@pytest.mark.parametrize("rnn_type,layers", [("lstm", 1), ("lstm", 2), ("gru", 2)])
def test_lockstep_head_equals_the_stacked_decoder_and_joint(rnn_type, layers):
    args = toy_args()
    args.decoder_conf = {"embed_size": 16, "hidden_size": 16, "num_layers": layers, "rnn_type": rnn_type}
    base = build_toy_model(args=args)
    ens = TeacherEnsemble(iter([base] + [perturbed_copy(base, seed=s, trainable=HEAD_TRAINABLE) for s in (1, 2)]))
    head, B = LockstepHead(ens), 5
    head.start(B, ens.blank_id)
    state = ens.decoder.init_state(B)
    out, state = ens.decoder.step(torch.zeros(B, dtype=torch.long), state)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):  # a different subset of utterances emits a token at each step
        rows = torch.nonzero(torch.rand(B, generator=g) < 0.6)[:, 0]
        labels = torch.randint(1, ens.vocab_size, (len(rows),), generator=g)
        head.step(rows, labels)
        h, c = state
        o, (h_new, c_new) = ens.decoder.step(labels, (h[:, :, rows], None if c is None else c[:, :, rows]))
        h[:, :, rows], out[:, rows] = h_new, o
        if c is not None:
            c[:, :, rows] = c_new
        torch.testing.assert_close(head.dec_proj, ens.joint.project_decoder(out), atol=1e-6, rtol=1e-6)


def test_ties_go_to_the_lowest_index():
    ens = TeacherEnsemble(iter(distinct_random_teachers(k=3)))
    dec = LockstepDecoder(ens, NoiselessPlurality())
    logits = torch.tensor([[[0.0, 2, 2, 1]], [[3.0, 3, 0, 0]], [[0.0, 0, 1, 1]]])  # [K=3, A=1, V=4]
    hist = dec.votes(logits)  # teacher argmaxes 1, 0, 2 (each tie to its lowest index)
    np.testing.assert_array_equal(hist, [[1, 1, 1, 0]])
    assert NoiselessPlurality()(hist).labels[0] == 0  # a three-way tie: class 0


def test_symbols_per_frame_are_capped_and_every_query_counted():
    base = build_toy_model(seed=2, sharpness=8.0, blank_bias=-6.0)  # tokens win almost everywhere
    ens = TeacherEnsemble(iter([base, perturbed_copy(base, 1, scale=0.05)]))
    utts = {u: w for u, (w, _, _) in toy_utterances(3, seed=1).items()}
    res = LockstepDecoder(ens, NoiselessPlurality(), max_symbols_per_frame=2, batch_size=2).decode(list(utts),
                                                                                                   utts.get)
    released, owner = res.queries.all_released, res.queries.all_utt
    for i, u in enumerate(utts):
        r = res.utterances[u]
        seq = released[owner == i]
        assert r.queries == len(seq) and r.status == LABELLED
        t = sym = 0
        for y in seq:  # replay the frame pointer from the released labels
            if y == 0:
                t, sym = t + 1, 0
            else:
                sym += 1
                assert sym <= 2
                if sym == 2:
                    t, sym = t + 1, 0
        assert t == r.frames
        assert [int(y) for y in seq if y != 0] == r.token_ids
        assert len(r.token_ids) > r.frames // 2  # the cap did bind


def test_confident_gnmax_drops_an_utterance_at_its_first_refusal_and_its_cost_is_paid():
    models = distinct_random_teachers(k=5, scale=0.6)
    ens = TeacherEnsemble(iter(models))
    utts = {u: w for u, (w, _, _) in toy_utterances(6, seed=2).items()}
    agg = ConfidentGNMax(sigma1=0.3, threshold=4.5, sigma2=0.5, seed=0)
    res = LockstepDecoder(ens, agg, max_symbols_per_frame=3, batch_size=3).decode(list(utts), utts.get)
    owner, answered, released = res.queries.all_utt, res.queries.all_answered, res.queries.all_released
    statuses = {r.status for r in res.utterances.values()}
    assert REFUSED_THRESHOLD in statuses
    for i, u in enumerate(utts):
        r = res.utterances[u]
        mine = np.flatnonzero(owner == i)
        if r.status == REFUSED_THRESHOLD:
            assert not answered[mine[-1]] and released[mine[-1]] == REFUSED  # stopped at the refusal ...
            assert answered[mine[:-1]].all()  # ... its first one
            assert r.token_ids == []
        else:
            assert r.status == LABELLED and answered[mine].all()
    votes = res.queries.all_votes
    s = RunSettings("c", "confident_gnmax", "token", 100.0, 1e-5, {"sigma1": 0.3, "threshold": 4.5, "sigma2": 0.5})
    cost = run_cost(s, votes, answered)
    ref = confident_gnmax_cost(votes, answered, 0.3, 4.5, 0.5)
    np.testing.assert_allclose(cost.rdp_data_dependent, ref.rdp_data_dependent)
    assert cost.queries == len(votes) and cost.answered == int(answered.sum()) < cost.queries
    # the refused queries pay the threshold step: dropping them from the log would cost less
    cheaper = confident_gnmax_cost(votes[answered], answered[answered], 0.3, 4.5, 0.5)
    assert np.all(cost.rdp_data_independent > cheaper.rdp_data_independent)


def test_budget_stops_the_run_and_drops_utterances_in_progress():
    ens = TeacherEnsemble(iter(distinct_random_teachers(k=4, scale=0.1)))
    utts = {u: w for u, (w, _, _) in toy_utterances(8, seed=3).items()}
    budget = PrivacyBudget(60.0, 1e-5)
    res = LockstepDecoder(ens, GNMax(0.5, seed=1), max_symbols_per_frame=3, batch_size=2).decode(
        list(utts), utts.get, budget=budget)
    assert res.budget_exhausted and budget.exhausted
    counts = res.status_counts()
    assert counts.get(STOPPED_BUDGET, 0) >= 1 and counts.get(NOT_REACHED, 0) >= 1
    assert budget.spent_eps()[0] <= 60.0
    assert budget.queries_run == res.queries.num_queries
    s = RunSettings("g", "gnmax", "token", 60.0, 1e-5, {"sigma": 0.5})
    np.testing.assert_allclose(run_cost(s, res.queries.all_votes, res.queries.all_answered).rdp_data_independent,
                               budget.spent_data_independent, rtol=1e-9)
    # a data-independent stop: the number of queries is what the settings allow, whatever the votes were
    per_query = run_cost(s, res.queries.all_votes[:1], res.queries.all_answered[:1]).rdp_data_independent
    assert budget.queries_run == max_queries(per_query, 60.0, 1e-5)
    # nothing after the stop: the not-reached utterances have no queries
    for r in res.utterances.values():
        if r.status == NOT_REACHED:
            assert r.queries == 0


def test_non_finite_scores_are_an_error():
    models = distinct_random_teachers(k=2)
    with torch.no_grad():
        models[1].joint_network.lin_out.bias[3] = float("nan")
    utts = {u: w for u, (w, _, _) in toy_utterances(1, seed=0).items()}
    with pytest.raises(FloatingPointError, match="teacher_1"):
        LockstepDecoder(TeacherEnsemble(iter(models)), NoiselessPlurality()).decode(list(utts), utts.get)


def test_soft_votes_sum_the_teachers_posteriors():
    models = distinct_random_teachers(k=3)
    ens = TeacherEnsemble(iter(models))
    utts = {u: w for u, (w, _, _) in toy_utterances(2, seed=4).items()}
    res = LockstepDecoder(ens, NoiselessPlurality(), vote="soft", max_symbols_per_frame=3).decode(list(utts),
                                                                                                utts.get)
    votes = res.queries.all_votes
    np.testing.assert_allclose(votes.sum(axis=1), 3.0)
    assert np.all(votes.max(axis=1) < 3.0)  # posteriors, not one-hot counts
    logits = torch.randn(3, 2, ens.vocab_size)
    dec = LockstepDecoder(ens, NoiselessPlurality(), vote="soft")
    np.testing.assert_allclose(dec.votes(logits), torch.softmax(logits.double(), -1).sum(0).numpy())
