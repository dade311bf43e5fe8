"""Aggregators (ties, noise, seeds, thresholds, budgets) and properties of the per-query RDP bounds."""

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats

from espnet_pate.privacy import calibration, rdp_gnmax, rdp_lnmax, smooth_sensitivity
from espnet_pate.privacy.budget import PrivacyBudget
from espnet_pate.privacy.conversion import eps_improved, rdp_allowance
from espnet_pate.privacy.mechanisms import REFUSED, ConfidentGNMax, GNMax, InteractiveGNMax, LNMax
from espnet_pate.privacy.orders import DEFAULT_ORDERS
from espnet_pate.privacy.votes import hard_votes, plurality, soft_votes


class ZeroNoise:
    """A generator stand-in that adds no noise, to see the argmax rule itself."""

    def normal(self, loc, scale, size=None):
        return np.zeros(size)

    def laplace(self, loc, scale, size=None):
        return np.zeros(size)


# ------------------------------------------------------------------------------------------------ ties, votes
def test_plurality_ties_go_to_lowest_index():
    np.testing.assert_array_equal(plurality([[1, 3, 3], [2, 2, 2], [0, 0, 5]]), [1, 0, 2])


@pytest.mark.parametrize("agg", [GNMax(1.0, rng=ZeroNoise()), LNMax(1.0, rng=ZeroNoise())], ids=["gnmax", "lnmax"])
def test_noisy_max_ties_go_to_lowest_index(agg):
    labels, answered = agg(np.array([[1, 3, 3], [2, 2, 2], [0, 0, 5]]))
    np.testing.assert_array_equal(labels, [1, 0, 2])
    assert answered.all()


def test_confident_gnmax_ties_and_threshold_without_noise():
    agg = ConfidentGNMax(1.0, 3.0, 1.0, rng=ZeroNoise())
    labels, answered = agg(np.array([[1, 3, 3], [2, 2, 2], [0, 0, 5]]))
    np.testing.assert_array_equal(answered, [True, False, True])  # max >= T passes, ties at T pass
    np.testing.assert_array_equal(labels, [1, REFUSED, 2])


def test_accountant_plurality_ties():
    # A tie counts the other top class as a competitor at gap 0 (P = 1/2), whichever index wins.
    for votes in ([5, 5, 0], [0, 5, 5], [5, 0, 5]):
        assert rdp_gnmax.logq_gnmax(np.array(votes, float), 2.0) == pytest.approx(
            rdp_gnmax.logq_gnmax(np.array([5.0, 5.0, 0.0]), 2.0), rel=1e-15)
    assert rdp_gnmax.logq_gnmax(np.array([5.0, 5.0, 0.0]), 0.01) == pytest.approx(math.log(0.5))


def test_hard_and_soft_votes():
    labels = np.array([[0, 2, 2, 1], [3, 3, 3, 3]])
    np.testing.assert_array_equal(hard_votes(labels, 4), [[1, 1, 2, 0], [0, 0, 0, 4]])
    post = np.full((2, 4, 3), 1 / 3)
    np.testing.assert_allclose(soft_votes(post), np.full((2, 3), 4 / 3))
    with pytest.raises(ValueError):
        soft_votes(np.full((4, 3), 0.5))
    with pytest.raises(ValueError):
        hard_votes(np.array([[0, 4]]), 4)


def test_shapes_single_query_and_batched_steps():
    rng_votes = np.random.default_rng(0).integers(0, 5, size=(3, 7, 11)).astype(float)
    labels, answered = GNMax(1.0, seed=1)(rng_votes)
    assert labels.shape == answered.shape == (3, 7)
    labels, answered = GNMax(1.0, seed=1)(np.array([0.0, 9.0, 1.0]))
    assert labels.shape == () and int(labels) == 1 and bool(answered)
    assert rdp_gnmax.rdp_gnmax(rng_votes, 2.0).shape == (3, 7, DEFAULT_ORDERS.size)


# ------------------------------------------------------------------------------------------------ noise
def test_tiny_noise_answers_the_argmax():
    votes = np.random.default_rng(1).permuted(np.tile(np.arange(10.0), (500, 1)), axis=1)  # distinct counts
    for agg in (GNMax(1e-6), LNMax(1e-6), ConfidentGNMax(1e-6, 0.0, 1e-6)):
        labels, answered = agg(votes)
        assert answered.all()
        np.testing.assert_array_equal(labels, votes.argmax(axis=1))


def test_huge_noise_spreads_answers():
    votes = np.tile([10.0, 0, 0, 0], (20000, 1))
    for agg in (GNMax(1e6, seed=2), LNMax(1e6, seed=2)):
        freq = np.bincount(agg(votes).labels, minlength=4) / len(votes)
        np.testing.assert_allclose(freq, 0.25, atol=0.015)


def _assert_frequency(hits: int, n: int, p: float):
    assert abs(hits - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1, (hits, n * p)


def test_gnmax_noise_scale():
    # Two classes, gap d: P[answer 1] = P[N(0, 2 sigma^2) > d].
    n, sigma, d = 40000, 3.0, 4.0
    labels = GNMax(sigma, seed=3)(np.tile([d, 0.0], (n, 1))).labels
    _assert_frequency(int(labels.sum()), n, scipy.stats.norm.sf(d / (math.sqrt(2) * sigma)))


def test_lnmax_noise_scale():
    # Two classes, gap d: P[answer 1] = (2 + gamma d) / (4 e^(gamma d)) exactly (2017, Lemma 4).
    n, b, d = 40000, 2.0, 3.0
    labels = LNMax(b, seed=4)(np.tile([d, 0.0], (n, 1))).labels
    g = 1 / b
    _assert_frequency(int(labels.sum()), n, (2 + g * d) / (4 * math.exp(g * d)))


def test_confident_threshold_probability():
    n, sigma1, t = 40000, 5.0, 12.0
    answered = ConfidentGNMax(sigma1, t, 1.0, seed=5)(np.tile([10.0, 2.0, 0.0], (n, 1))).answered
    _assert_frequency(int(answered.sum()), n, math.exp(rdp_gnmax.log_pr_answered(np.array([10.0, 2, 0]), t, sigma1)))


def test_seeds():
    votes = np.tile([3.0, 2.0, 1.0], (200, 1))
    a, b = GNMax(2.0), GNMax(2.0)
    assert not a.seed_fixed and a.describe()["not_for_release"] is False
    assert not np.array_equal(a(votes).labels, b(votes).labels)  # OS-seeded: independent runs differ
    c, d = GNMax(2.0, seed=7), GNMax(2.0, seed=7)
    np.testing.assert_array_equal(c(votes).labels, d(votes).labels)
    assert c.seed_fixed and c.describe() == {"mechanism": "gnmax", "params": {"sigma": 2.0}, "seed": 7,
                                            "seed_fixed": True, "not_for_release": True}
    assert GNMax(2.0, rng=np.random.default_rng()).seed_fixed  # an outside generator: assume fixed
    with pytest.raises(ValueError):
        GNMax(0.0)


def test_interactive_gnmax_thresholds_on_student_gap_answers_with_raw_votes():
    agg = InteractiveGNMax(1e-6, 3.0, 1e-6, seed=0)
    votes = np.array([[6.0, 4.0, 0.0], [10.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    student = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    labels, answered = agg(votes, student)
    # n - M p: [-4, 4, 0] passes (max 4 >= 3) and is answered from the raw votes (class 0, not 1);
    # [0, 0, 0]: the student already agrees, refused; [6.67, -3.3, -3.3]: passes.
    np.testing.assert_array_equal(answered, [True, False, True])
    np.testing.assert_array_equal(labels, [0, REFUSED, 0])


# ------------------------------------------------------------------------------------------------ budget
def test_budget_stops_gnmax_at_the_data_independent_limit():
    sigma, eps, delta = 40.0, 2.0, 1e-5
    fit = calibration.max_queries(rdp_gnmax.rdp_gnmax_data_independent(sigma), eps, delta)
    budget = PrivacyBudget(eps, delta, basis="data_independent")
    votes = np.tile([250.0] + [0.0] * 9, (fit + 50, 1))
    labels, answered = GNMax(sigma, seed=0)(votes, budget=budget)
    assert answered.sum() == fit and answered[:fit].all() and (labels[fit:] == REFUSED).all()
    assert budget.exhausted and budget.queries_run == fit
    assert budget.spent_eps()[0] <= eps
    assert not GNMax(sigma, seed=0)(votes[:3], budget=budget).answered.any()  # stays stopped


def test_budget_data_dependent_counts_realized_confident_costs():
    votes = np.tile([250.0] + [0.0] * 9, (30, 1))
    votes[::2] = [130.0, 120.0] + [0.0] * 8  # refused by the threshold, pays the threshold step only
    budget = PrivacyBudget(100.0, 1e-5, basis="data_dependent")  # analysis only
    agg = ConfidentGNMax(40.0, 200.0, 40.0, seed=1)
    _, answered = agg(votes, budget=budget)
    thr = rdp_gnmax.rdp_threshold(rdp_gnmax.log_pr_answered(votes, 200.0, 40.0), 40.0).sum(axis=0)
    ans = rdp_gnmax.rdp_gnmax(votes[answered], 40.0).sum(axis=0)
    np.testing.assert_allclose(budget.spent_data_dependent, thr + ans, rtol=1e-12)
    np.testing.assert_allclose(budget.spent_data_independent,
                               30 * rdp_gnmax.rdp_threshold_data_independent(40.0)
                               + answered.sum() * rdp_gnmax.rdp_gnmax_data_independent(40.0), rtol=1e-12)


def test_rdp_allowance_matches_dp_accounting_conversion():
    rng = np.random.default_rng(0)
    for _ in range(20):
        curve = rng.uniform(0, 1) * DEFAULT_ORDERS ** rng.uniform(0.5, 1.5) / 100
        eps, _ = eps_improved(curve, 1e-5)
        assert np.any(curve <= rdp_allowance(eps * (1 + 1e-9), 1e-5))
        assert not np.any(curve <= rdp_allowance(eps * (1 - 1e-6), 1e-5))


# ------------------------------------------------------------------------------------------------ properties
def _neighbour(votes, rng):
    # One teacher changes its vote: one count down by one, another up by one.
    out = votes.copy()
    src = rng.choice(np.flatnonzero(out > 0))
    dst = rng.choice([i for i in range(out.size) if i != src])
    out[src] -= 1
    out[dst] += 1
    return out


def test_data_dependent_rdp_never_exceeds_data_independent():
    rng = np.random.default_rng(11)
    for _ in range(60):
        k, m = int(rng.integers(2, 300)), int(rng.integers(2, 30))
        votes = np.bincount(rng.choice(m, size=k, p=rng.dirichlet(np.full(m, rng.uniform(0.05, 2)))), minlength=m)
        votes = votes.astype(float)
        sigma = float(rng.uniform(0.3, 1.0) * k / 4)
        b = float(rng.uniform(0.5, 20))
        for n in (votes, _neighbour(votes, rng)):
            assert np.all(rdp_gnmax.rdp_gnmax(n, sigma) <= rdp_gnmax.rdp_gnmax_data_independent(sigma) * (1 + 1e-12))
            log_pr = rdp_gnmax.log_pr_answered(n, 0.7 * k, sigma)
            assert np.all(rdp_gnmax.rdp_threshold(log_pr, sigma)
                          <= rdp_gnmax.rdp_threshold_data_independent(sigma) * (1 + 1e-12))
            lnmax = rdp_lnmax.rdp_lnmax(n, b)
            assert np.all(lnmax <= rdp_lnmax.rdp_lnmax_data_independent(b) * (1 + 1e-12))
            assert np.all(lnmax <= rdp_lnmax.rdp_lnmax_data_independent_2017(b) * (1 + 1e-12))
            assert np.all(rdp_lnmax.rdp_lnmax_data_independent(b) <= rdp_lnmax.rdp_lnmax_data_independent_2017(b))


def test_q_zero_costs_nothing():
    assert np.all(rdp_gnmax.rdp_data_dependent_gaussian(-np.inf, 3.0) == 0)
    assert np.all(rdp_gnmax.rdp_threshold(0.0, 3.0) == 0)  # P[answered] = 1
    assert np.all(rdp_gnmax.rdp_threshold(-np.inf, 3.0) == 0)  # P[answered] = 0
    assert np.all(rdp_lnmax.rdp_lnmax_2017(-np.inf, 3.0) == 0)
    assert np.all(rdp_gnmax.rdp_gnmax(np.array([7.0]), 3.0) == 0)  # one class: the answer is fixed
    # log q far below the float range of q stays finite and tiny, and decreases towards 0.
    deep = rdp_gnmax.rdp_data_dependent_gaussian(np.array([-600.0, -6000.0]), 3.0, [2.0, 10.0])
    assert np.all(np.isfinite(deep)) and np.all(deep[1] <= deep[0]) and np.all(deep < 1e-100)


def _log_gnmax_output(votes, sigma, z=np.linspace(-14, 14, 8001)):
    # log P[argmax(n + N(0, sigma^2 I)) = i] = log int phi(z) prod_{j != i} Phi((n_i - n_j)/sigma + z) dz
    out = []
    for i in range(votes.size):
        others = np.delete(votes, i)
        log_f = scipy.stats.norm.logpdf(z) + scipy.stats.norm.logcdf((votes[i] - others[:, None]) / sigma + z).sum(0)
        out.append(scipy.special.logsumexp(log_f) + math.log(z[1] - z[0]))
    return np.array(out)


def test_data_dependent_bound_covers_the_true_renyi_divergence():
    # Theorem 6 bounds D_l(M(n) || M(n')) for every neighbour n' of n. Check it against the divergence of the
    # exact output distributions (numerical integration) for small histograms in the data-dependent regime.
    rng = np.random.default_rng(5)
    orders = np.array([2.0, 3.0, 5.0, 8.0, 12.0, 20.0])
    for votes, sigma in [([18.0, 1.0, 1.0], 3.0), ([25.0, 4.0, 1.0], 4.0), ([12.0, 0.0, 0.0, 0.0], 2.0)]:
        votes = np.array(votes)
        bound = rdp_gnmax.rdp_gnmax(votes, sigma, orders)
        assert np.any(bound < rdp_gnmax.rdp_gnmax_data_independent(sigma, orders))  # a data-dependent case
        log_p = _log_gnmax_output(votes, sigma)
        for _ in range(6):
            log_q = _log_gnmax_output(_neighbour(votes, rng), sigma)
            true = [scipy.special.logsumexp(lam * log_p + (1 - lam) * log_q) / (lam - 1) for lam in orders]
            assert np.all(np.array(true) <= bound * (1 + 1e-6) + 1e-12), (votes, true, bound)


def test_local_sensitivity_bounds_the_change_to_a_neighbour():
    rng = np.random.default_rng(3)
    sigma, order, k = 4.0, 8.0, 30
    for top in (30, 26, 22, 16):
        votes = np.array([top, k - top, 0, 0], dtype=float)
        ls = smooth_sensitivity.local_sensitivity_by_distance_gnmax(votes, k, sigma, order)
        beta = rdp_gnmax.rdp_gnmax(votes, sigma, [order])[0]
        for _ in range(10):
            change = abs(rdp_gnmax.rdp_gnmax(_neighbour(votes, rng), sigma, [order])[0] - beta)
            assert change <= ls[0] * (1 + 1e-9) + 1e-15
        assert smooth_sensitivity.smooth_sensitivity(ls, 0.49 / order) >= ls[0]


def test_threshold_local_sensitivity_bounds_the_change_to_a_neighbour():
    k, t, sigma1, order = 50, 35.0, 8.0, 6.0
    nonzero = 0
    for top in (5, 15, 21, 22, 35, 49, 50):
        votes = np.array([top, 0.0])  # only max(votes) matters
        ls = smooth_sensitivity.local_sensitivity_by_distance_threshold(votes, k, t, sigma1, order)
        here = rdp_gnmax.rdp_threshold(rdp_gnmax.log_pr_answered(votes, t, sigma1), sigma1, [order])[0]
        for step in (-1, 1):
            if 0 <= top + step <= k:
                near = rdp_gnmax.rdp_threshold(rdp_gnmax.log_pr_answered(np.array([top + step]), t, sigma1),
                                               sigma1, [order])[0]
                assert abs(near - here) <= ls[0] * (1 + 1e-12)
        nonzero += ls[0] > 0
    assert nonzero >= 4


def test_smooth_sensitivity_release_is_seeded_costs_gnss_and_takes_no_data_derived_noise():
    ls = np.array([0.01, 0.02, 0.015])
    kw = {"beta": 0.049, "sigma_ss": 5.0}
    a = smooth_sensitivity.release_smooth_sensitivity(0.3, ls, 10.0, 1e-5, np.random.default_rng(9), **kw)
    b = smooth_sensitivity.release_smooth_sensitivity(0.3, ls, 10.0, 1e-5, np.random.default_rng(9), **kw)
    assert a == b
    assert a.sigma_ss == 5.0 and a.smooth_sensitivity == pytest.approx(0.02 * math.exp(-0.049))
    assert a.rdp_release_cost == pytest.approx(smooth_sensitivity.rdp_gnss(0.049, 5.0, 10.0))
    free = smooth_sensitivity.release_smooth_sensitivity(0.3, np.zeros(3), 10.0, 1e-5, np.random.default_rng(9),
                                                         **kw)
    assert free.rdp_released == 0.3 and free.rdp_release_cost == a.rdp_release_cost  # paid all the same
    with pytest.raises(TypeError):  # no default noise scale: it would be chosen from the votes
        smooth_sensitivity.release_smooth_sensitivity(0.3, ls, 10.0, 1e-5, np.random.default_rng(9))
    with pytest.raises(ValueError, match="order"):
        smooth_sensitivity.release_smooth_sensitivity(0.3, ls, 20.0, 1e-5, np.random.default_rng(9), **kw)


def test_smooth_sensitivity_preconditions_hold_where_the_reference_uses_them():
    """Where the reference applies smooth sensitivity (MNIST, sigma 40, orders 7.5 and 14, 10 classes)."""
    assert smooth_sensitivity.check_conditions(40.0, 10, 14.0) and smooth_sensitivity.check_conditions(40.0, 10, 7.5)
    assert not smooth_sensitivity.check_conditions(10.0, 10, 50.0)  # C6 fails: the release must refuse it
    with pytest.raises(ValueError, match="not valid"):
        smooth_sensitivity.release_smooth_sensitivity(0.3, np.array([0.01]), 50.0, 1e-5, np.random.default_rng(0),
                                                      beta=0.49 / 50, sigma_ss=5.0, sigma=10.0, num_classes=10)


# ------------------------------------------------------------------------------------------------ calibration
def test_calibrated_gnmax_sigma_meets_the_target_tightly():
    q, target, delta = 286, 2.0, 1e-5
    sigma = calibration.calibrate_gnmax_sigma(target, delta, q)
    assert eps_improved(q * rdp_gnmax.rdp_gnmax_data_independent(sigma), delta)[0] <= target
    assert eps_improved(q * rdp_gnmax.rdp_gnmax_data_independent(sigma * 0.999), delta)[0] > target
    exact = calibration.calibrate_gnmax_sigma(target, delta, q, accountant="exact")
    assert exact < sigma
    assert rdp_gnmax.eps_gnmax_data_independent_exact(exact, q, delta) == pytest.approx(target, rel=1e-6)


def test_calibrated_lnmax_scale_meets_the_target():
    b = calibration.calibrate_lnmax_scale(3.0, 1e-5, 100)
    assert eps_improved(100 * rdp_lnmax.rdp_lnmax_data_independent(b), 1e-5)[0] <= 3.0
    assert eps_improved(100 * rdp_lnmax.rdp_lnmax_data_independent(b * 0.999), 1e-5)[0] > 3.0


def test_calibrated_confident_gnmax_follows_the_policy():
    p = calibration.calibrate_confident_gnmax(2.0, 1e-5, 640, 250)
    assert p.threshold == 200 and p.sigma1 == pytest.approx(3.75 * p.sigma2)
    worst = 640 * (rdp_gnmax.rdp_threshold_data_independent(p.sigma1) + rdp_gnmax.rdp_gnmax_data_independent(p.sigma2))
    assert eps_improved(worst, 1e-5)[0] <= 2.0
    votes = np.tile([240.0, 10.0] + [0.0] * 8, (640, 1))  # confident teachers: much less noise suffices
    planned = calibration.calibrate_confident_gnmax(2.0, 1e-5, 640, 250, votes=votes)
    assert planned.sigma2 < p.sigma2 and planned.eps <= 2.0


def test_data_dependent_sigma_search():
    votes = np.tile([50.0] + [0.0] * 100, (2000, 1))
    sigma, eps = calibration.calibrate_gnmax_sigma_data_dependent(8.0, 1e-5, votes)
    assert eps <= 8.0 and eps == pytest.approx(eps_improved(rdp_gnmax.total_rdp_gnmax(votes, sigma), 1e-5)[0])
    contested = np.tile([26.0, 24.0] + [0.0] * 99, (2000, 1))
    with pytest.raises(ValueError, match="no sigma"):
        calibration.calibrate_gnmax_sigma_data_dependent(1.0, 1e-5, contested)
