"""python -m espnet_pate.bin.pate_analysis: the reference figures through the command line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from espnet_pate.bin import pate_analysis
from espnet_pate.privacy.accounting import lnmax_cost

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "..", "shared", "data", "pate2018")
if not os.path.isdir(DATA):
    DATA = "/work/shared/data/pate2018"
VOTES = os.path.join(DATA, "mnist_250_teachers.npy")
with open(os.path.join(DATA, "reference_vectors.json")) as _f:
    REF = json.load(_f)
REL = 1e-6


def run_main(capsys, *argv):
    assert pate_analysis.main([str(a) for a in argv]) == 0
    return json.loads(capsys.readouterr().out)


def run_subprocess(*argv):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "espnet_pate.bin.pate_analysis", *map(str, argv)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    return proc


@pytest.fixture(scope="module")
def answered_rows(tmp_path_factory):
    path = tmp_path_factory.mktemp("rows") / "answered.json"
    path.write_text(json.dumps(REF["confident_gnmax_realized_mnist_answered_rows"]))
    return str(path)


@pytest.mark.parametrize("entry", REF["plain_gnmax_mnist_votes"], ids=lambda e: f"rows{e['first_n_rows']}")
def test_plain_gnmax_figures(capsys, entry):
    out = run_main(capsys, "--votes", VOTES, "--mechanism", "gnmax", "--sigma", entry["sigma"],
                   "--queries", entry["first_n_rows"], "--delta", entry["delta"])
    assert out["eps_classic"] == pytest.approx(entry["eps_data_dependent"], rel=REL)
    assert out["order_classic"] == entry["order_dd"]
    assert out["eps_data_independent_classic"] == pytest.approx(entry["eps_data_independent"], rel=REL)
    assert out["order_data_independent_classic"] == entry["order_di"]
    assert out["answered"] == out["queries"] == entry["first_n_rows"]
    # improved <= classic; the exact Gaussian composition <= the RDP figure it tightens
    assert out["eps"] < out["eps_classic"]
    assert out["eps_data_independent_gaussian_exact"] < out["eps_data_independent"]


@pytest.mark.parametrize("entry", REF["gnmax_data_independent"], ids=lambda e: f"Q{e['queries']}")
def test_gnmax_data_independent_figures(capsys, entry):
    out = run_main(capsys, "--votes", VOTES, "--mechanism", "gnmax", "--sigma", entry["sigma"],
                   "--queries", entry["queries"], "--delta", entry["delta"])
    assert out["eps_data_independent_classic"] == pytest.approx(entry["eps_ref_grid"], rel=REL)
    assert out["order_data_independent_classic"] == entry["order_ref_grid"]


def test_confident_gnmax_realized_figure_subprocess(answered_rows):
    entry = REF["confident_gnmax_realized_mnist"][0]
    proc = run_subprocess("--votes", VOTES, "--mechanism", "confident_gnmax", "--sigma1", entry["sigma1"],
                          "--threshold", entry["threshold"], "--sigma2", entry["sigma2"], "--answered-rows",
                          answered_rows, "--queries", entry["first_n_rows"], "--delta", entry["delta"])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert {"eps", "eps_classic", "order", "eps_data_independent", "answered"} <= out.keys()
    assert out["answered"] == entry["n_answered"] and out["queries"] == entry["first_n_rows"]
    assert out["eps_classic"] == pytest.approx(entry["eps_classic"], rel=REL)
    assert out["order_classic"] == entry["order"]
    assert out["eps"] == pytest.approx(entry["eps_improved_conversion"], rel=REL)
    assert out["order"] == entry["order_improved"]
    assert "eps_data_independent" in out and out["eps_data_independent"] > out["eps"]


def test_confident_gnmax_simulated_threshold(capsys):
    entry = REF["confident_gnmax_realized_mnist"][0]
    args = ["--votes", VOTES, "--mechanism", "confident_gnmax", "--sigma1", entry["sigma1"], "--threshold",
            entry["threshold"], "--sigma2", entry["sigma2"], "--queries", entry["first_n_rows"],
            "--delta", entry["delta"]]
    seeded = run_main(capsys, *args, "--seed", 12345)  # the seed the reference run used
    assert seeded["answered"] == entry["n_answered"] and seeded["not_for_release"] is True
    assert seeded["eps_classic"] == pytest.approx(entry["eps_classic"], rel=REL)
    fresh = run_main(capsys, *args)
    assert fresh["not_for_release"] is False and fresh["seed"] is None
    assert fresh["answered_source"].startswith("simulated")
    assert 200 < fresh["answered"] < 340  # E[answered] on these votes is about 270


def test_lnmax_matches_the_library(capsys):
    out = run_main(capsys, "--votes", VOTES, "--mechanism", "lnmax", "--laplace-scale", 20, "--queries", 100,
                   "--delta", 1e-5)
    votes = np.load(VOTES)[:100]
    expected = lnmax_cost(votes, 20.0).summary(1e-5)
    for key in ("eps", "order", "eps_classic", "eps_data_independent", "answered"):
        assert out[key] == pytest.approx(expected[key], rel=1e-12)
    assert out["eps"] <= out["eps_data_independent"]


@pytest.mark.parametrize("argv", [
    ["--mechanism", "gnmax", "--delta", "1e-5"],  # no --sigma
    ["--mechanism", "gnmax", "--sigma", "4", "--sigma1", "3", "--delta", "1e-5"],
    ["--mechanism", "confident_gnmax", "--sigma1", "150", "--threshold", "200", "--delta", "1e-5"],
    ["--mechanism", "lnmax", "--laplace-scale", "20", "--seed", "1", "--delta", "1e-5"],
])
def test_bad_arguments_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as e:
        pate_analysis.main(["--votes", VOTES, *argv])
    assert e.value.code == 2


def test_bad_answered_rows(capsys, tmp_path):
    rows = tmp_path / "rows.json"
    rows.write_text("[0, 5, 700]")
    code = pate_analysis.main(["--votes", VOTES, "--mechanism", "confident_gnmax", "--sigma1", "150", "--threshold",
                               "200", "--sigma2", "40", "--queries", "640", "--answered-rows", str(rows),
                               "--delta", "1e-5"])
    assert code == 2 and "within [0, 640)" in capsys.readouterr().err
