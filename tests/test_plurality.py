"""The thresholded plurality of teacher transcripts: its accounting against an independent computation, the
tie-break, the threshold, calibration, the pate_analysis command, and each teacher's own greedy 1-best."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize, stats

from espnet_pate.privacy.plurality import (
    DELTA_SHARE,
    ThresholdedPlurality,
    calibrate_plurality,
    expected_releases,
    normalise_transcript,
    plurality_beta,
    plurality_cost,
    plurality_threshold,
)


def gaussian_delta(eps, mu):
    """Exact delta(eps) of a Gaussian mechanism with mu = sensitivity / noise (Balle & Wang 2018), by hand."""
    return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)


def eps_rdp_continuous(rdp_slope, delta):
    """min over real lambda > 1 of the improved conversion of the curve rdp_slope * lambda (by hand)."""
    def eps(lam):
        return rdp_slope * lam + math.log((lam - 1) / lam) - (math.log(delta) + math.log(lam)) / (lam - 1)
    res = optimize.minimize_scalar(eps, bounds=(1.0001, 5000), method="bounded", options={"xatol": 1e-10})
    return res.fun


@pytest.mark.parametrize("sigma,threshold,queries", [(5.85, 31.15, 40), (13.0, 72.3, 200), (30.0, 190.0, 1200)])
def test_cost_matches_an_independent_computation(sigma, threshold, queries):
    delta = 1e-5
    c = plurality_cost(sigma, threshold, queries, delta)
    beta = 0.5 * math.erfc((threshold - 1) / sigma / math.sqrt(2))
    assert c.beta == pytest.approx(beta, rel=1e-9)
    assert c.delta_extra == pytest.approx(queries * beta, rel=1e-9)
    assert c.delta_gaussian == pytest.approx(delta - queries * beta, rel=1e-9)
    assert c.eps_extra == pytest.approx(-queries * math.log(1 - beta), rel=1e-6)
    # RDP of Q Gaussians of sensitivity sqrt(2) and std sigma: Q lambda / sigma^2.
    lam = c.orders
    np.testing.assert_allclose(c.rdp, queries * lam / sigma ** 2, rtol=1e-9)
    ideal = eps_rdp_continuous(queries / sigma ** 2, c.delta_gaussian)
    assert ideal - 1e-9 <= c.eps_gaussian <= ideal * 1.01  # a grid can only lose, and little
    assert c.eps == pytest.approx(c.eps_gaussian + c.eps_extra)
    # PLD: a valid bound on the same Gaussian composition, at least the exact figure and at most RDP's.
    p = plurality_cost(sigma, threshold, queries, delta, accountant="pld")
    mu = math.sqrt(queries) * math.sqrt(2) / sigma
    exact = optimize.brentq(lambda e: gaussian_delta(e, mu) - c.delta_gaussian, 1e-6, 100)
    assert exact - 1e-3 <= p.eps_gaussian <= c.eps_gaussian
    assert p.eps_gaussian == pytest.approx(exact, abs=0.02)


def test_threshold_too_low_for_the_queries_is_refused():
    with pytest.raises(ValueError, match="raise the threshold"):
        plurality_cost(5.0, 6.0, 100, 1e-5)  # beta ~ 0.16: Q beta >> delta


def test_calibration_fits_the_target_with_a_fiftieth_of_delta_for_the_threshold():
    for eps, q in [(8.0, 40), (2.0, 25), (8.0, 1200)]:
        c = calibrate_plurality(eps, 1e-5, q)
        assert c.eps <= eps and c.eps == pytest.approx(eps, rel=1e-4)
        assert c.delta_extra == pytest.approx(0.02e-5, rel=1e-6)  # many releases fit one ledger's delta
        assert c.threshold == pytest.approx(plurality_threshold(c.sigma, q, 1e-5))
        slightly_less = plurality_cost(c.sigma * 0.999, plurality_threshold(c.sigma * 0.999, q, 1e-5), q, 1e-5)
        assert slightly_less.eps > eps  # the smallest sigma that fits


def test_privacy_md_regime_table_is_reproduced_within_its_rounding():
    """PRIVACY.md: about 36 labels at K = 40 and 1,200 at K = 250 (epsilon 8, 90% agreement), optimising Q."""
    def best(k, eps):
        return max(q * expected_releases([0.9 * k], c.sigma, c.threshold)
                   for q in (20, 30, 40, 50, 60, 800, 1000, 1200, 1500)
                   for c in [calibrate_plurality(eps, 1e-5, q, delta_share=0.5)])  # PRIVACY.md's beta
    assert 28 <= best(40, 8.0) <= 40
    assert 950 <= best(250, 8.0) <= 1300


def test_tie_break_and_noise_do_not_depend_on_teacher_order():
    votes = ["turn left", "Turn  left", "go home", "go home", "", "stop"]
    for seed in range(50):
        a = ThresholdedPlurality(0.8, 1.5, seed=seed).release(votes)
        b = ThresholdedPlurality(0.8, 1.5, seed=seed).release(list(reversed(votes)))
        assert a == b


def test_exact_tie_goes_to_the_lexicographically_smallest_string():
    class NoNoise:
        def normal(self, loc, scale, size):
            return np.zeros(size)

    agg = ThresholdedPlurality(1.0, 1.5, rng=NoNoise())
    assert agg.release(["zulu", "alpha", "zulu", "alpha"]) == "alpha"
    assert agg.release(["alpha", "zulu", "alpha", "zulu"]) == "alpha"
    assert agg.release(["b"]) is None  # one vote stays below T = 1.5
    assert agg.release(["", "  "]) is None  # empty outputs are no votes


def test_normalisation_is_fixed_and_public():
    assert normalise_transcript("  Call  ALICE\tnow ") == "call alice now"


def test_threshold_releases_consensus_and_hides_a_single_teachers_string():
    sigma, q, delta = 6.0, 40, 1e-5
    t = plurality_threshold(sigma, q, delta)
    agg = ThresholdedPlurality(sigma, t, seed=0)
    consensus = [agg.release(["navigate to paris"] * 38 + ["navigate to pars"] * 2) for _ in range(4000)]
    assert set(consensus) <= {"navigate to paris", None}  # 2 votes never beat 38 through the threshold
    rate = consensus.count("navigate to paris") / len(consensus)
    assert rate == pytest.approx(expected_releases([38], sigma, t), abs=0.03)  # ~0.84
    lone = [agg.release(["secret name"] + [""] * 39) for _ in range(20000)]
    assert lone.count("secret name") == 0  # beta ~ 1.25e-7
    assert plurality_beta(sigma, t) == pytest.approx(DELTA_SHARE * delta / q, rel=1e-6)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "espnet_pate.bin.pate_analysis", *args], capture_output=True,
                          text=True)


def test_pate_analysis_plurality_needs_no_votes_and_prints_eps_and_beta():
    r = run_cli("--mechanism", "plurality", "--sigma", "5.85", "--threshold", "31.15", "--queries", "40",
                "--delta", "1e-5")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    ref = plurality_cost(5.85, 31.15, 40, 1e-5)
    assert out["eps"] == pytest.approx(ref.eps) and out["beta"] == pytest.approx(ref.beta)
    assert out["data_dependent"] is False
    pld = json.loads(run_cli("--mechanism", "plurality", "--sigma", "5.85", "--threshold", "31.15", "--queries", "40",
                             "--delta", "1e-5", "--accountant", "pld").stdout.strip().splitlines()[-1])
    assert pld["eps"] < out["eps"]
    assert run_cli("--mechanism", "plurality", "--sigma", "5", "--threshold", "31", "--delta", "1e-5").returncode == 2
    assert run_cli("--mechanism", "gnmax", "--sigma", "5", "--delta", "1e-5").returncode == 2  # gnmax needs votes


# ------------------------------------------------------------------------------- each teacher's own 1-best
espnet2 = pytest.importorskip("espnet2")


def test_greedy_each_equals_lockstep_greedy_per_teacher():
    from espnet_pate.ensemble.lockstep import LockstepDecoder, NoiselessPlurality
    from espnet_pate.ensemble.own_transcripts import agreement_counts, greedy_each
    from espnet_pate.ensemble.teachers import TeacherEnsemble
    from espnet_pate.ensemble.toy import HEAD_TRAINABLE, build_toy_model, fitted_toy_state, perturbed_copy, toy_utterances

    utts = toy_utterances(num_utts=6)
    ids = list(utts)
    waves = [utts[u][0] for u in ids]
    base = build_toy_model(0)
    base.load_state_dict(fitted_toy_state())
    models = [base] + [perturbed_copy(base, seed=s, scale=0.5, trainable=HEAD_TRAINABLE) for s in (1, 2)]
    ens = TeacherEnsemble(models)
    hyps = greedy_each(ens, ens.encode_batch(waves), max_symbols_per_frame=3)
    per_teacher = []
    for model in models:
        dec = LockstepDecoder(TeacherEnsemble([model]), NoiselessPlurality(), max_symbols_per_frame=3)
        res = dec.decode(ids, lambda u: utts[u][0])
        per_teacher.append([res.utterances[u].token_ids for u in ids])
    for k in range(len(models)):
        assert [hyps[b][k] for b in range(len(ids))] == per_teacher[k]
    assert per_teacher[0] != per_teacher[1]  # the teachers differ, so the check above has teeth
    assert any(h for row in hyps for h in row)  # and they emit tokens
    assert agreement_counts([["a b", "A b", "c"], ["", ""]]).tolist() == [2, 0]


def test_planning_from_public_agreement_buys_more_queries_where_teachers_agree_more():
    from espnet_pate.privacy.plurality import plan_queries

    q_hi, cost_hi, e_hi = plan_queries([40] * 50, 8.0, 1e-5, 1000)
    q_lo, cost_lo, e_lo = plan_queries([30] * 50, 8.0, 1e-5, 1000)
    assert q_hi > q_lo and e_hi > e_lo
    assert cost_hi.eps <= 8.0 and cost_lo.eps <= 8.0
    # the chosen number beats its neighbours on the same expected-labels criterion
    for q in (q_lo // 2, q_lo * 2):
        c = calibrate_plurality(8.0, 1e-5, max(q, 1))
        assert max(q, 1) * expected_releases([30], c.sigma, c.threshold) <= e_lo + 1e-9


def test_several_plurality_releases_compose_in_one_ledger(tmp_path):
    from espnet_pate.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(str(tmp_path / "l.jsonl"), eps_budget=100.0, delta=1e-5)
    costs = [calibrate_plurality(eps, 1e-5, q) for eps, q in [(2.0, 5), (8.0, 46), (8.0, 200), (4.0, 30)]]
    for i, c in enumerate(costs):
        ledger.record(f"p{i}", "plurality", {"i": i}, c.rdp, c.queries, eps_extra=c.eps_extra,
                      delta_extra=c.delta_extra, data_dependent=False)
    total = ledger.total()
    assert total.valid and total.delta_extra == pytest.approx(4 * DELTA_SHARE * 1e-5)
    assert max(c.eps for c in costs) < total.eps < sum(c.eps for c in costs)
