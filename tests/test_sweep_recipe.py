"""`./run.sh --sweep full` on the debug configuration (what CI runs of issue 10's comparison): every mechanism at
every budget, both public sets, repeats; RESULTS.md's epsilons equal their ledger entries; the sweep's raised
budget is a recorded act; the default run's releases are reused, not paid twice.

Runs in a copy of the shared debug run (the `recipe` fixture), so that the other slow tests see the default run.
"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from espnet_pate.privacy.ledger import PrivacyLedger
from espnet_pate.report.ledger_check import check_results_against_ledger
from espnet_pate.report.privacy_json import read_privacy_info

ROOT = Path(__file__).resolve().parents[1]
NUM_TEACHERS = 4  # conftest.py's RECIPE_NUM_TEACHERS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(recipe, tmp_path_factory):
    work = tmp_path_factory.mktemp("sweep")
    dirs = {}
    for name in ("datadir", "dumpdir", "expdir"):
        dirs[name] = work / Path(recipe[name]).name
        shutil.copytree(recipe[name], dirs[name], symlinks=True)
    before = PrivacyLedger(str(dirs["expdir"] / "privacy_ledger.jsonl")).releases
    args = [str(ROOT / "run.sh"), "--debug", "true", "--sweep", "full", "--repeats", "2", "--stage", "4",
            "--stop-stage", "7", "--num_teachers", str(NUM_TEACHERS)]
    for name, path in dirs.items():
        args += [f"--{name}", str(path)]
    proc = subprocess.run(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=3000)
    (work / "sweep.log").write_text(proc.stdout)
    assert proc.returncode == 0, f"run.sh --sweep full failed; end of its output:\n{proc.stdout[-5000:]}"
    return {**dirs, "before": before, "log": proc.stdout}


def test_every_mechanism_budget_public_set_and_repeat_is_a_student(sweep):
    exp = sweep["expdir"]
    pate = exp / f"pate_head_k{NUM_TEACHERS}"
    for mech in ("plurality", "gnmax_utt", "lnmax_utt"):
        for eps in (50, 400):
            for source, suffix in (("public_unlabeled", ""), ("public_unlabeled_diff", "_diff")):
                for rep in ("", "_seed2"):
                    name = f"{mech}_eps{eps}{suffix}{rep}"
                    info = read_privacy_info(pate / name)
                    assert info["public_data"] == source and info["target_epsilon"] == eps, name
                    if (pate / name / "text").stat().st_size:  # a release may label nothing: no student then
                        assert read_privacy_info(exp / f"student_{name}")["public_data"] == source, name


def test_dpsgd_at_every_budget_and_repeat(sweep):
    for prefix in ("dpsgd", "dpsgd_head"):
        for eps in (50, 400):
            for rep in ("", "_seed2"):
                info = read_privacy_info(sweep["expdir"] / f"{prefix}_eps{eps}{rep}")
                assert info["mechanism"] == "dpsgd" and info["epsilon"] <= eps + 1e-6


def test_results_epsilons_equal_their_ledger_entries_and_repeats_form_one_row(sweep):
    exp = sweep["expdir"]
    assert check_results_against_ledger(exp / "RESULTS.md", exp, exp / "privacy_ledger.jsonl",
                                        "valid.loss.ave.pth") > 0
    lines = (exp / "RESULTS.md").read_text().splitlines()
    head = next(line for line in lines if line.startswith("| system"))
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    col = {name: i for i, name in enumerate(cells(head))}
    row = cells(next(line for line in lines if re.search(r"\bstudent_gnmax_utt_eps400_diff\b", line)))
    assert row[col["public audio"]] == "public_unlabeled_diff" and row[col["runs"]] == "2", row


def test_the_budget_was_raised_visibly_and_nothing_was_paid_twice(sweep):
    ledger = PrivacyLedger(str(sweep["expdir"] / "privacy_ledger.jsonl"))
    changes = ledger.budget_changes
    assert len(changes) == 1 and changes[0].eps_budget == 1e6 and "--set-budget" in changes[0].reason
    ids = [r.release_id for r in ledger.releases]
    assert len(ids) == len(set(ids))
    assert {r.release_id for r in sweep["before"]} <= set(ids)
