"""The privacy ledger: crash safety, idempotent releases, the fixed delta, recorded budget changes, additive terms,
the release lock."""

import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from espnet_pate.bin.privacy_ledger import main as ledger_cli
from espnet_pate.privacy.conversion import eps_improved
from espnet_pate.privacy.digests import make_release_id
from espnet_pate.privacy.ledger import (
    BudgetExceededError,
    LedgerCorruptError,
    LedgerMismatchError,
    LedgerMissingError,
    PrivacyLedger,
    ReleaseConflictError,
    read_budget_config,
)
from espnet_pate.privacy.ledger_file import encode_line
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


def test_a_corrupt_complete_line_is_an_error_naming_file_and_line_the_last_one_included(tmp_path):
    path = str(tmp_path / "ledger.jsonl")
    ledger = PrivacyLedger(path, eps_budget=10, delta=1e-5)
    record(ledger, "r0")
    record(ledger, "r1")
    good = open(path, "rb").read()
    raw = lines(path)
    raw[2] = raw[2].replace(b'"what":"r1"', b'"what":"rX"')  # the last complete line: checksum no longer matches
    with open(path, "wb") as f:
        f.write(b"\n".join(raw))
    with pytest.raises(LedgerCorruptError, match=f"{path}: line 3"):
        PrivacyLedger(path)
    with open(path, "wb") as f:  # zeros a file system left after a power cut, ending in a newline
        f.write(good + b"\x00\x00\x00\n")
    with pytest.raises(LedgerCorruptError, match="line 4"):
        PrivacyLedger(path)
    raw = good.split(b"\n")
    raw[1] = raw[1].replace(b'"what":"r0"', b'"what":"rX"')
    with open(path, "wb") as f:
        f.write(b"\n".join(raw))
    with pytest.raises(LedgerCorruptError, match="line 2"):
        PrivacyLedger(path)


def test_the_header_fixes_budget_and_delta(tmp_path):
    path = str(tmp_path / "ledger.jsonl")
    PrivacyLedger(path, eps_budget=8, delta=1e-5)
    for budget, delta in ((16, 1e-5), (8, 1e-6)):
        with pytest.raises(LedgerMismatchError) as err:
            PrivacyLedger(path, eps_budget=budget, delta=delta)
        assert "eps=8 at delta=1e-05" in str(err.value) and f"eps={budget:g} at delta={delta:g}" in str(err.value)
    with pytest.raises(LedgerMismatchError):
        PrivacyLedger(path, delta=1e-6)
    with pytest.raises(LedgerMismatchError, match="conversion"):
        PrivacyLedger(path, conversion="classic")
    opened = PrivacyLedger(path)  # without a budget: the header's
    assert (opened.eps_budget, opened.delta) == (8.0, 1e-5)
    record(opened, "r0", 286)
    with pytest.raises(BudgetExceededError):
        for i in range(10):
            record(opened, f"more{i}", 286)
    with pytest.raises(LedgerMismatchError):  # a budget-less ledger cannot be given one later
        PrivacyLedger(str(tmp_path / "free.jsonl"))
        PrivacyLedger(str(tmp_path / "free.jsonl"), eps_budget=8, delta=1e-5)
    with pytest.raises(LedgerMissingError, match="missing.jsonl"):
        PrivacyLedger(str(tmp_path / "missing.jsonl"), create=False)


def test_budget_config_is_read_with_clear_errors(tmp_path):
    conf = tmp_path / "privacy.yaml"
    conf.write_text("eps_budget: 24\ndelta: 1.0e-5\n")
    assert read_budget_config(str(conf)) == (24.0, 1e-5)
    conf.write_text("eps_budget: 24\n")
    with pytest.raises(ValueError, match=f"{conf}: missing key delta"):
        read_budget_config(str(conf))
    conf.write_text("eps_budget: 24\ndelta: 1e-5\nbudget: 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        read_budget_config(str(conf))
    for name in ("privacy.yaml", "privacy_debug.yaml"):
        eps, delta = read_budget_config(os.path.join(REPO, "conf", name))
        assert eps > 0 and 0 < delta < 1


def test_additive_terms_compose_after_the_rdp_conversion(tmp_path):
    """The thresholded plurality: an RDP curve plus (eps_extra, delta_extra) per release (PRIVACY.md)."""
    ledger = PrivacyLedger(str(tmp_path / "ledger.jsonl"), eps_budget=20, delta=1e-5)
    record(ledger, "gnmax", 100)
    record(ledger, "plurality-a", 50, eps_extra=0.3, delta_extra=2e-6)
    record(ledger, "plurality-b", 10, eps_extra=0.2, delta_extra=3e-6)
    # independent: the curves' sum converted at delta minus the additive deltas, plus the additive epsilons
    want = eps_improved(curve(160), 1e-5 - 5e-6)[0] + 0.5
    assert ledger.spent()[0] == pytest.approx(want, rel=1e-12)
    assert ledger.spent()[0] > eps_improved(curve(160), 1e-5)[0] + 0.5  # a smaller delta costs more
    fits, total = ledger.check_fits(curve(1), eps_extra=0.1, delta_extra=1e-6)
    assert fits and total == pytest.approx(eps_improved(curve(161), 4e-6)[0] + 0.6, rel=1e-12)
    assert ledger.check_fits(curve(0) * 0, delta_extra=5e-6) == (False, np.inf)  # delta_extra would reach delta
    size = os.path.getsize(str(tmp_path / "ledger.jsonl"))
    with pytest.raises(BudgetExceededError, match="not below the ledger's delta"):
        record(ledger, "too-much-delta", 1, delta_extra=5e-6)
    fits, total = ledger.check_fits(curve(100000))
    assert not fits and total > 20
    with pytest.raises(BudgetExceededError):
        record(ledger, "too-much-eps", 100000)
    assert os.path.getsize(str(tmp_path / "ledger.jsonl")) == size and len(ledger.releases) == 3
    with pytest.raises(ReleaseConflictError):  # the additive terms are part of a release's cost
        record(ledger, "plurality-b", 10, eps_extra=0.25, delta_extra=3e-6)
    with pytest.raises(ValueError, match="no epsilon holds"):
        ledger.spent(delta=4e-6)


def test_format_1_ledgers_are_read_with_zero_additive_terms(tmp_path):
    path = tmp_path / "old.jsonl"
    header = {"kind": "header", "format_version": 1, "orders_id": "ref2018-297",
              "orders": DEFAULT_ORDERS.tolist(), "eps_budget": 10.0, "delta": 1e-5, "conversion": "improved",
              "time": ""}
    rel = {"kind": "release", "release_id": "old-1", "what": "labels", "mechanism": "gnmax", "params": {},
           "queries": 100, "rdp": curve(100).tolist(), "data_dependent": False, "orders_id": "ref2018-297",
           "outputs": None, "details": {}, "time": ""}
    path.write_bytes(encode_line(header) + encode_line(rel))
    ledger = PrivacyLedger(str(path), eps_budget=10, delta=1e-5)
    (old,) = ledger.releases
    assert (old.eps_extra, old.delta_extra) == (0.0, 0.0)
    assert ledger.spent() == eps_improved(curve(100), 1e-5)
    record(ledger, "new", 10, eps_extra=0.1, delta_extra=1e-6)
    assert ledger.spent()[0] == pytest.approx(eps_improved(curve(110), 9e-6)[0] + 0.1, rel=1e-12)
    fresh = PrivacyLedger(str(tmp_path / "new.jsonl"))
    assert json.loads(lines(fresh.path)[0])["format_version"] == 2


RELEASER = """
import hashlib, os, sys, time
from espnet_pate.privacy.ledger import PrivacyLedger
from espnet_pate.privacy.rdp_gnmax import rdp_gnmax_data_independent as di
path, out, go = sys.argv[1:4]
ledger = PrivacyLedger(path)
while not os.path.exists(go):
    time.sleep(0.005)
with ledger.exclusive():
    with ledger.exclusive():  # re-entrant within the process
        done = ledger.get("release-1")
        if done is not None:
            print("reused", done.outputs)
            sys.exit(0)
        labels = os.urandom(16).hex()  # fresh noise: two publishers would publish two different label sets
        with open(out + ".pending", "w") as f:
            f.write(labels)
        time.sleep(0.3)
        digest = hashlib.sha256(labels.encode()).hexdigest()
        ledger.record("labels", "gnmax", {"sigma": 40.0}, 10 * di(40.0), 10, release_id="release-1", outputs=digest)
        os.replace(out + ".pending", out)
        print("published", digest)
"""


def test_exclusive_lets_one_of_two_concurrent_releasers_publish(tmp_path):
    path = str(tmp_path / "ledger.jsonl")
    PrivacyLedger(path, eps_budget=100, delta=1e-5)
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", RELEASER, path, str(tmp_path / f"labels{i}"), str(go)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    time.sleep(1.0)  # both have imported and wait at the start line
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    said = sorted(out.split() for out, _ in results)
    assert [s[0] for s in said] == ["published", "reused"]
    assert said[0][1] == said[1][1]  # the second one reuses the first one's labels
    (rel,) = PrivacyLedger(path).releases
    assert rel.outputs == said[0][1]


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
    with pytest.raises(LedgerMismatchError, match="one grid"):
        PrivacyLedger(path, orders=np.arange(2, 65))
    with pytest.raises(ValueError):
        PrivacyLedger(path).record("x", "gnmax", {}, np.ones(DEFAULT_ORDERS.size - 1), 1)


def test_cli_init_fixes_the_budget_and_show_prints_the_total(tmp_path):
    path = tmp_path / "exp" / "privacy_ledger.jsonl"
    cli = lambda *a: subprocess.run([sys.executable, "-m", "espnet_pate.bin.privacy_ledger", *map(str, a)],  # noqa
                                    cwd=REPO, capture_output=True, text=True)
    conf = os.path.join(REPO, "conf", "privacy.yaml")
    made = cli("init", "--ledger", path, "--config", conf)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["eps_budget"] == read_budget_config(conf)[0]
    record(PrivacyLedger(str(path)), "labels", 100)
    again = cli("init", "--ledger", path, "--config", conf)  # the same budget: a check, nothing new
    assert again.returncode == 0 and json.loads(again.stdout)["releases"] == 1
    other = cli("init", "--ledger", path, "--config", os.path.join(REPO, "conf", "privacy_debug.yaml"))
    assert other.returncode == 2 and "was created with budget" in other.stderr
    shown = cli("show", "--ledger", path).stdout.strip().split("\n")
    assert json.loads(shown[0])["what"] == "labels"
    assert json.loads(shown[-1])["eps"] == pytest.approx(eps_improved(curve(100), 1e-5)[0])
    missing = cli("show", "--ledger", tmp_path / "none.jsonl")
    assert missing.returncode == 2 and "no privacy ledger" in missing.stderr


def test_raising_the_budget_lets_a_refused_release_fit(tmp_path):
    path = str(tmp_path / "ledger.jsonl")
    ledger = PrivacyLedger(path, eps_budget=3.0, delta=1e-5)
    record(ledger, "first", 286)  # eps 2.64
    with pytest.raises(BudgetExceededError, match="eps=3 at delta"):
        record(ledger, "second", 286)
    assert not ledger.check_fits(curve(286))[0]
    change = ledger.set_budget(6.0, "comparison sweep")
    assert (change.eps_budget, change.previous, change.reason) == (6.0, 3.0, "comparison sweep")
    assert ledger.eps_budget == 6.0 and ledger.check_fits(curve(286))[0]
    _, new = record(ledger, "second", 286)
    assert new and [r.what for r in ledger.releases] == ["first", "second"]  # a budget line is not a release
    kinds = [json.loads(line)["kind"] for line in lines(path)[:-1]]
    assert kinds == ["header", "release", "budget", "release"]
    line = json.loads(lines(path)[2])
    assert (line["eps_budget"], line["previous"], line["reason"]) == (6.0, 3.0, "comparison sweep")
    size = os.path.getsize(path)
    assert ledger.set_budget(6, "again") is None and os.path.getsize(path) == size  # the same value: nothing new


def test_a_budget_below_what_is_spent_is_refused(tmp_path):
    path = str(tmp_path / "ledger.jsonl")
    ledger = PrivacyLedger(path, eps_budget=10, delta=1e-5)
    record(ledger, "first", 286)  # eps 2.6439
    size = os.path.getsize(path)
    with pytest.raises(ValueError) as err:
        ledger.set_budget(2.5, "too low")
    assert "eps=2.5 " in str(err.value) and "eps=2.6439" in str(err.value)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite and > 0"):
            ledger.set_budget(bad, "bad")
    with pytest.raises(ValueError, match="reason"):
        ledger.set_budget(5, " ")
    assert os.path.getsize(path) == size and ledger.eps_budget == 10.0
    ledger.set_budget(3, "tighter")  # lowering above what is spent is allowed, and binds
    with pytest.raises(BudgetExceededError, match="eps=3 at delta"):
        record(ledger, "second", 286)


def test_reopen_sees_the_effective_budget_and_the_header_value_is_refused(tmp_path):
    path = str(tmp_path / "ledger.jsonl")
    ledger = PrivacyLedger(path, eps_budget=8, delta=1e-5)
    other = PrivacyLedger(path)  # opened before the change, by another job
    ledger.set_budget(16, "sweep")
    assert PrivacyLedger(path).eps_budget == 16.0 and PrivacyLedger(path, eps_budget=16, delta=1e-5)
    record(other, "r0", 286)
    assert other.eps_budget == 16.0  # every read of the file takes its effective budget
    with pytest.raises(LedgerMismatchError) as err:
        PrivacyLedger(path, eps_budget=8, delta=1e-5)
    message = str(err.value)
    for part in ("created with budget eps=8 at delta=1e-05", "changed since to eps=16", "asks for eps=8",
                 f"init --ledger {path} --config CONFIG --set-budget"):
        assert part in message, (part, message)
    with pytest.raises(LedgerMismatchError) as err:  # the delta never changes
        PrivacyLedger(path, eps_budget=16, delta=1e-6)
    assert "fixed for good" in str(err.value) and "--set-budget" not in str(err.value)


def test_a_torn_or_corrupt_budget_line_is_handled_like_a_release_line(tmp_path, caplog):
    path = str(tmp_path / "ledger.jsonl")
    ledger = PrivacyLedger(path, eps_budget=3, delta=1e-5)
    record(ledger, "r0", 286)
    ledger.set_budget(6, "sweep")
    good = open(path, "rb").read()
    start = good.rstrip(b"\n").rfind(b"\n") + 1
    with open(path, "r+b") as f:  # killed mid-write of the budget line: the change did not happen
        f.truncate(start + (len(good) - start) // 2)
    with caplog.at_level(logging.WARNING):
        reopened = PrivacyLedger(path)
    assert "torn last record" in caplog.text
    assert reopened.eps_budget == 3.0 and reopened.budget_changes == []
    with pytest.raises(BudgetExceededError):
        record(reopened, "r1", 286)
    reopened.set_budget(6, "sweep, again")
    raw = lines(path)
    assert raw[-1] == b"" and [json.loads(line)["kind"] for line in raw[:-1]] == ["header", "release", "budget"]
    assert PrivacyLedger(path).eps_budget == 6.0
    raw[2] = raw[2].replace(b'"eps_budget":6.0', b'"eps_budget":60.0')  # checksum no longer matches
    with open(path, "wb") as f:
        f.write(b"\n".join(raw))
    with pytest.raises(LedgerCorruptError, match=f"{path}: line 3"):
        PrivacyLedger(path)
    bad = {"kind": "budget", "eps_budget": -1.0, "previous": 6.0, "reason": "x", "time": ""}
    with open(path, "wb") as f:  # checksummed, but no budget
        f.write(good + encode_line(bad))
    with pytest.raises(LedgerCorruptError, match="line 4 sets the budget"):
        PrivacyLedger(path)
    with open(path, "wb") as f:
        f.write(good + encode_line({"kind": "budget", "eps_budget": 7.0}))
    with pytest.raises(LedgerCorruptError, match="line 4 is not a budget change"):
        PrivacyLedger(path)


def test_cli_init_set_budget_records_the_config_budget_and_refuses_without_it(tmp_path, capsys):
    path = str(tmp_path / "privacy_ledger.jsonl")
    confs = {}
    for name, eps, delta in (("base", 8, "1.0e-5"), ("sweep", 16, "1.0e-5"), ("low", 1, "1.0e-5"),
                             ("delta", 16, "1.0e-6")):
        confs[name] = tmp_path / f"{name}.yaml"
        confs[name].write_text(f"eps_budget: {eps}\ndelta: {delta}\n")
    init = lambda name, *flag: ledger_cli(["init", "--ledger", path, "--config", str(confs[name]), *flag])  # noqa
    assert init("base") == 0
    record(PrivacyLedger(path), "labels", 286)
    capsys.readouterr()
    assert init("sweep") == 2
    assert "--set-budget" in capsys.readouterr().err and PrivacyLedger(path).eps_budget == 8.0
    assert init("sweep", "--set-budget") == 0
    out, err = capsys.readouterr()
    assert "warning" in err and "eps=8 -> eps=16" in err
    summary = json.loads(out)
    assert summary["eps_budget"] == 16.0 and summary["releases"] == 1
    (change,) = summary["budget_changes"]
    assert (change["eps_budget"], change["previous"]) == (16.0, 8.0)
    assert change["reason"] == f"init --set-budget --config {confs['sweep']}"
    size = os.path.getsize(path)
    assert init("sweep", "--set-budget") == 0 and init("sweep") == 0  # the effective budget: a check, nothing new
    assert "warning" not in capsys.readouterr().err and os.path.getsize(path) == size
    for name, says in (("delta", "fixed for good"), ("low", "below what 1 recorded releases have already spent")):
        assert init(name, "--set-budget") == 2
        assert says in capsys.readouterr().err
    assert os.path.getsize(path) == size and PrivacyLedger(path).eps_budget == 16.0
    fresh = str(tmp_path / "fresh.jsonl")  # a new ledger is just created with the config's budget
    assert ledger_cli(["init", "--ledger", fresh, "--config", str(confs["sweep"]), "--set-budget"]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err and json.loads(out)["budget_changes"] == []


def test_summary_lists_budget_changes(tmp_path, capsys):
    path = str(tmp_path / "ledger.jsonl")
    ledger = PrivacyLedger(path, eps_budget=8, delta=1e-5)
    assert ledger.summary()["budget_changes"] == []
    ledger.set_budget(16, "sweep")
    ledger.set_budget(12, "after the sweep")
    summary = PrivacyLedger(path).summary()
    assert summary["eps_budget"] == 12.0
    assert [(c["eps_budget"], c["previous"], c["reason"]) for c in summary["budget_changes"]] == \
        [(16.0, 8.0, "sweep"), (12.0, 16.0, "after the sweep")]
    assert all(c["time"] for c in summary["budget_changes"])
    assert ledger_cli(["show", "--ledger", path]) == 0
    assert json.loads(capsys.readouterr().out.strip().split("\n")[-1])["budget_changes"] == summary["budget_changes"]
