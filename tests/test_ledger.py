"""The privacy ledger: crash safety, idempotent releases, the budget."""

import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from espnet_pate.privacy.conversion import eps_improved
from espnet_pate.privacy.ledger import (
    BudgetExceededError,
    LedgerCorruptError,
    PrivacyLedger,
    ReleaseConflictError,
    make_release_id,
)
from espnet_pate.privacy.orders import DEFAULT_ORDERS
from espnet_pate.privacy.rdp_gnmax import rdp_gnmax_data_independent

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def curve(queries, sigma=40.0):
    return queries * rdp_gnmax_data_independent(sigma)


def record(ledger, name, queries=100, **kw):
    return ledger.record(name, "gnmax", {"sigma": 40.0}, curve(queries), queries, **kw)


def lines(path):
    with open(path, "rb") as f:
        return f.read().split(b"\n")


def test_spent_is_the_composition_of_all_releases(tmp_path):
    ledger = PrivacyLedger(str(tmp_path / "ledger.jsonl"), eps_budget=10, delta=1e-5)
    for i, q in enumerate((100, 50, 7)):
        _, new = record(ledger, f"labels-{i}", q)
        assert new
    eps, order = ledger.spent()
    assert (eps, order) == eps_improved(curve(157), 1e-5)
    reopened = PrivacyLedger(str(tmp_path / "ledger.jsonl"), eps_budget=10, delta=1e-5)
    assert [r.what for r in reopened.releases] == ["labels-0", "labels-1", "labels-2"]
    np.testing.assert_allclose(reopened.spent_rdp(), curve(157), rtol=1e-12)


def test_same_release_twice_spends_nothing_new(tmp_path):
    path = str(tmp_path / "ledger.jsonl")
    ledger = PrivacyLedger(path, eps_budget=10, delta=1e-5)
    votes = np.arange(30.0).reshape(3, 10)
    first, new = record(ledger, "labels", inputs={"votes": votes}, outputs="sha256:abc")
    size = os.path.getsize(path)
    again, new_again = record(ledger, "labels", inputs={"votes": votes.copy()}, outputs="sha256:abc")
    assert new and not new_again and again == first
    assert os.path.getsize(path) == size and len(ledger.releases) == 1
    # Other inputs are another release.
    _, new_other = record(ledger, "labels", inputs={"votes": votes + 1}, outputs="sha256:abc")
    assert new_other and len(ledger.releases) == 2


def test_same_id_with_other_cost_or_outputs_is_refused(tmp_path):
    ledger = PrivacyLedger(str(tmp_path / "ledger.jsonl"))
    record(ledger, "labels", release_id="run-1", outputs="sha256:abc")
    with pytest.raises(ReleaseConflictError, match="run-1"):
        record(ledger, "labels", 101, release_id="run-1", outputs="sha256:abc")
    with pytest.raises(ReleaseConflictError, match="new release"):
        record(ledger, "labels", release_id="run-1", outputs="sha256:fresh-noise")


def test_release_ids_are_stable():
    a = make_release_id("labels", "gnmax", {"sigma": 40.0}, {"votes": np.ones((2, 3))})
    assert a == make_release_id("labels", "gnmax", {"sigma": 40.0}, {"votes": np.ones((2, 3))})
    assert a != make_release_id("labels", "gnmax", {"sigma": 41.0}, {"votes": np.ones((2, 3))})
    assert a != make_release_id("labels", "gnmax", {"sigma": 40.0}, {"votes": np.ones((3, 2))})


def test_over_budget_release_is_refused_with_a_clear_message(tmp_path):
    path = str(tmp_path / "ledger.jsonl")
    ledger = PrivacyLedger(path, eps_budget=3.0, delta=1e-5)
    record(ledger, "first", 286)  # eps 2.64 (improved) at sigma 40
    size = os.path.getsize(path)
    with pytest.raises(BudgetExceededError) as err:
        record(ledger, "second", 286)
    message = str(err.value)
    for part in ("eps=3 at delta=1e-05", "spent eps=2.6439", "'second'", "286 queries",
                 "cost eps=2.6439 on its own", "total to eps=3.9", "Nothing was recorded"):
        assert part in message, (part, message)
    assert os.path.getsize(path) == size and len(ledger.releases) == 1
    _, new = record(ledger, "small", 5)  # what still fits is accepted
    assert new and ledger.spent()[0] <= 3.0


def test_torn_last_record_is_ignored_and_cut_before_the_next_append(tmp_path, caplog):
    path = str(tmp_path / "ledger.jsonl")
    ledger = PrivacyLedger(path, eps_budget=10, delta=1e-5)
    for i in range(3):
        record(ledger, f"r{i}", 10 * (i + 1))
    data = open(path, "rb").read()
    cut = data.rstrip(b"\n").rfind(b"\n") + 1 + 700  # 700 bytes into the last record: a kill mid-write
    with open(path, "r+b") as f:
        f.truncate(cut)
    with caplog.at_level(logging.WARNING):
        reopened = PrivacyLedger(path, eps_budget=10, delta=1e-5)
        assert [r.what for r in reopened.releases] == ["r0", "r1"]
    assert "torn last record" in caplog.text
    np.testing.assert_allclose(reopened.spent_rdp(), curve(30), rtol=1e-12)
    record(reopened, "r3", 5)
    raw = lines(path)
    assert raw[-1] == b"" and all(json.loads(line) for line in raw[:-1])  # no garbage left in the file
    assert [r.what for r in PrivacyLedger(path).releases] == ["r0", "r1", "r3"]


def test_bad_last_line_is_a_crash_artefact_bad_middle_line_is_corruption(tmp_path, caplog):
    path = str(tmp_path / "ledger.jsonl")
    ledger = PrivacyLedger(path)
    record(ledger, "r0")
    record(ledger, "r1")
    with open(path, "ab") as f:
        f.write(b"\x00\x00\x00\n")  # e.g. zeros a file system left after a power cut
    with caplog.at_level(logging.WARNING):
        assert [r.what for r in PrivacyLedger(path).releases] == ["r0", "r1"]
    assert "torn" in caplog.text
    raw = lines(path)
    raw[1] = raw[1].replace(b'"what":"r0"', b'"what":"rX"')  # checksum no longer matches
    with open(path, "wb") as f:
        f.write(b"\n".join(raw))
    with pytest.raises(LedgerCorruptError, match="line 2"):
        PrivacyLedger(path)


def test_ledger_survives_a_killed_writer(tmp_path):
    path = str(tmp_path / "ledger.jsonl")
    writer = (
        "import sys\n"
        "from espnet_pate.privacy.ledger import PrivacyLedger\n"
        "from espnet_pate.privacy.rdp_gnmax import rdp_gnmax_data_independent as di\n"
        "ledger = PrivacyLedger(sys.argv[1], eps_budget=1e9, delta=1e-5)\n"
        "i = 0\n"
        "while True:\n"
        "    ledger.record(f'r{i}', 'gnmax', {'sigma': 40.0}, di(40.0), 1)\n"
        "    i += 1\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", writer, path], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and (not os.path.exists(path) or len(lines(path)) < 12):
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
    finally:
        proc.kill()  # SIGKILL: no cleanup, possibly mid-write
        proc.wait()
    releases = PrivacyLedger(path).releases
    assert len(releases) >= 10
    assert [r.what for r in releases] == [f"r{i}" for i in range(len(releases))]
    ledger = PrivacyLedger(path, eps_budget=1e9, delta=1e-5)
    ledger.record("after", "gnmax", {"sigma": 40.0}, curve(1), 1)
    assert len(ledger.releases) == len(releases) + 1
    np.testing.assert_allclose(ledger.spent_rdp(), curve(len(releases) + 1), rtol=1e-9)


def test_other_order_grid_is_refused(tmp_path):
    path = str(tmp_path / "ledger.jsonl")
    PrivacyLedger(path)
    with pytest.raises(ValueError, match="one grid"):
        PrivacyLedger(path, orders=np.arange(2, 65))
    with pytest.raises(ValueError):
        PrivacyLedger(path).record("x", "gnmax", {}, np.ones(DEFAULT_ORDERS.size - 1), 1)
