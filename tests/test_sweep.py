"""The sweep's stage 4: budgets written once, releases per public set and per repeat (each paid for), the set a
release labelled recorded for its student, the teachers' outputs decoded once per utterance."""

import json
from pathlib import Path

import pytest

pytest.importorskip("espnet2")

from espnet_pate.bin import make_student_data  # noqa: E402
from espnet_pate.data.kaldi_dir import read_table  # noqa: E402
from espnet_pate.ensemble import own_transcripts, utterance_vote  # noqa: E402
from espnet_pate.ensemble.pate_labeling import ConfigError, Stage4Inputs, run_stage4  # noqa: E402
from espnet_pate.ensemble.pate_plan import expand_runs, load_config, release_names, resolve_entry  # noqa: E402
from espnet_pate.ensemble.toy import write_toy_setup  # noqa: E402
from espnet_pate.privacy.ledger import PrivacyLedger  # noqa: E402
from espnet_pate.privacy.plurality import DELTA_SHARE  # noqa: E402
from espnet_pate.report.privacy_json import read_privacy_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_a_list_of_budgets_expands_into_one_run_each():
    runs = expand_runs({"plurality_eps{eps}": {"mechanism": "plurality", "target_eps": [1, 2.5, 8]},
                        "gnmax": {"mechanism": "gnmax", "target_eps": 4}})
    assert list(runs) == ["plurality_eps1", "plurality_eps2.5", "plurality_eps8", "gnmax"]
    assert runs["plurality_eps2.5"] == {"mechanism": "plurality", "target_eps": 2.5}
    with pytest.raises(ConfigError, match="needs .eps. in the run's name"):
        expand_runs({"plurality": {"target_eps": [1, 2]}})
    with pytest.raises(ConfigError, match="needs a list of target_eps"):
        expand_runs({"plurality_eps{eps}": {"target_eps": 2}})
    with pytest.raises(ConfigError, match="named twice"):
        expand_runs({"p_eps{eps}": {"target_eps": [1, 1.0]}})
    with pytest.raises(ConfigError, match="not a number"):
        expand_runs({"p_eps{eps}": {"target_eps": ["x"]}})


def test_the_sweep_configs_hold_each_mechanism_at_each_budget():
    for path, budgets in ((ROOT / "conf/pate_sweep.yaml", [1, 2, 4, 8]), (ROOT / "conf/pate_sweep_debug.yaml", [50, 400])):
        runs = load_config(path)["runs"]
        for mech in ("plurality", "gnmax", "lnmax"):
            got = sorted(r["target_eps"] for r in runs.values() if r["mechanism"] == mech)
            assert got == budgets, (path, mech)


def test_the_sweep_reuses_the_default_runs_releases():
    """Repeat 1 of a sweep entry named like a default entry must be the same release: same settings."""
    default, sweep = load_config(ROOT / "conf/pate.yaml"), load_config(ROOT / "conf/pate_sweep.yaml")
    shared = set(default["runs"]) & set(sweep["runs"])
    assert {"plurality_eps2", "plurality_eps8", "gnmax_utt_eps8", "lnmax_utt_eps8"} <= shared
    assert default["defaults"] == sweep["defaults"]
    for name in shared:
        assert default["runs"][name] == {**sweep["runs"][name], "target_eps": default["runs"][name]["target_eps"]}


def test_release_names_put_the_public_set_before_the_repeat():
    assert release_names(["a", "b"], "_diff", 3) == {
        "a_diff": "a", "a_diff_seed2": "a", "a_diff_seed3": "a", "b_diff": "b", "b_diff_seed2": "b",
        "b_diff_seed3": "b"}
    assert release_names(["a"]) == {"a": "a"}
    with pytest.raises(ConfigError):
        release_names(["a"], repeats=0)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_setup(tmp_path_factory.mktemp("toy"), num_teachers=3, num_utts=6)


def test_repeats_and_public_sets_are_separate_paid_releases(toy, tmp_path, monkeypatch):
    calls = {"greedy": 0, "loglik": 0}
    greedy, loglik = own_transcripts.greedy_each, utterance_vote.candidate_log_likelihoods

    def count_greedy(*a, **k):
        calls["greedy"] += len(a[1])
        return greedy(*a, **k)

    def count_loglik(*a, **k):
        calls["loglik"] += 1
        return loglik(*a, **k)

    monkeypatch.setattr(own_transcripts, "greedy_each", count_greedy)
    monkeypatch.setattr(utterance_vote, "candidate_log_likelihoods", count_loglik)
    conf = {"defaults": {"batch_size": 2}, "runs": expand_runs({
        "plurality_eps{eps}": {"mechanism": "plurality", "target_eps": [500, 1000], "queries": 4,
                               "select": "shortest"},
        "gnmax_eps{eps}": {"mechanism": "gnmax", "level": "utterance", "target_eps": [60, 80], "sigma_over_k": 0.2,
                           "nbest": 3, "beam_size": 3}})}
    lpath = tmp_path / "ledger.jsonl"
    ledger = PrivacyLedger(str(lpath), eps_budget=1e6, delta=1e-5)
    data = Path(toy["data"])
    out = tmp_path / "pate"
    inputs = Stage4Inputs(teacher_dirs=list(toy["teacher_dirs"]), data_dir=data, out_dir=out, unit="speaker",
                          public_model=toy["public"], command="pytest")
    reports = run_stage4(conf, inputs, ledger, name_suffix="_diff", repeats=2)
    names = [r["name"] for r in reports]
    assert names == ["plurality_eps500_diff", "plurality_eps500_diff_seed2", "plurality_eps1000_diff",
                     "plurality_eps1000_diff_seed2", "gnmax_eps60_diff", "gnmax_eps60_diff_seed2",
                     "gnmax_eps80_diff", "gnmax_eps80_diff_seed2"]
    assert len({r["release_id"] for r in reports}) == 8 and len(ledger.releases) == 8
    # every release adds its own noise to outputs decoded once: 4 shortest utterances, 6 with candidates at most
    assert calls["greedy"] <= 4 and 0 < calls["loglik"] <= 6
    for r in reports:
        assert r["public_data"] == data.name
        assert read_privacy_info(out / r["name"])["public_data"] == data.name
    # rerun: nothing spent again
    again = run_stage4(conf, inputs, ledger, name_suffix="_diff", repeats=2)
    assert [r["run_status"] for r in again] == ["reused"] * 8 and len(ledger.releases) == 8
    # the student's data: the release's text over the audio of the set it labelled
    rel = next(r for r in reports if r["utterances"]["written"])
    make_student_data.main(["--release", str(out / rel["name"]), "--datadir", str(data.parent),
                            str(tmp_path / "student")])
    assert read_table(tmp_path / "student/text") == read_table(out / rel["name"] / "text")
    wav = read_table(data / "wav.scp")
    assert all(wav[u] == p for u, p in read_table(tmp_path / "student/wav.scp").items())


def test_a_release_without_its_public_set_asks_for_a_stage4_rerun(tmp_path, capsys):
    (tmp_path / "rel").mkdir()
    (tmp_path / "rel/privacy.json").write_text(json.dumps({"epsilon": 1.0}))
    (tmp_path / "rel/text").write_text("u1 a\n")
    with pytest.raises(SystemExit) as e:
        make_student_data.main(["--release", str(tmp_path / "rel"), str(tmp_path / "out")])
    assert e.value.code == 2 and "rerun stage 4" in capsys.readouterr().err


def test_audits_attack_one_repeat_of_each_setting(tmp_path):
    from espnet_pate.asr.decode import MODEL_FILE
    from espnet_pate.attacks.systems import audited_systems
    from espnet_pate.report.privacy_json import write_privacy_info

    for name, claim in (("public_only", {"epsilon": 0, "mechanism": "public_only"}),
                        ("dpsgd_eps8", {"epsilon": 8, "mechanism": "dpsgd"}),
                        ("dpsgd_eps8_seed2", {"epsilon": 8, "mechanism": "dpsgd"}),
                        ("teacher_0", {"mechanism": "teacher"}), ("student_x", {})):
        (tmp_path / name).mkdir()
        (tmp_path / name / MODEL_FILE).write_bytes(b"")
        if claim:
            write_privacy_info(tmp_path / name, **claim)
    assert [d.name for d in audited_systems(tmp_path)] == ["dpsgd_eps8", "public_only"]


def test_the_sweeps_plurality_releases_fit_one_ledgers_delta():
    """Each thresholded plurality adds Q beta = share x delta outside RDP: the default run's releases and the sweep's
    (every budget, two public sets, three repeats) must leave part of the ledger's delta for the conversion."""
    from espnet_pate.privacy.plurality import plurality_cost

    def extra(path, copies):
        conf = load_config(ROOT / path)
        total = 0.0
        for name, entry in conf["runs"].items():
            if entry["mechanism"] == "plurality":
                s = resolve_entry(name, {**entry, "queries": 41}, conf["defaults"], 40)
                total += copies * plurality_cost(s.noise["sigma"], s.noise["threshold"], 41, s.delta).delta_extra
        return total

    assert extra("conf/pate.yaml", 1) + extra("conf/pate_sweep.yaml", 2 * 3) < 0.75 * 1e-5


def test_a_used_name_with_new_settings_and_a_cost_that_cannot_fit_are_refused_before_decoding(toy, tmp_path,
                                                                                              monkeypatch):
    from espnet_pate.ensemble import pate_labeling
    from espnet_pate.privacy.ledger import BudgetExceededError

    entry = {"mechanism": "plurality", "target_eps": 1000.0, "queries": 3, "select": "shortest"}
    inputs = Stage4Inputs(teacher_dirs=list(toy["teacher_dirs"]), data_dir=Path(toy["data"]), out_dir=tmp_path / "pate",
                          unit="speaker", public_model=toy["public"], command="pytest")
    ledger = PrivacyLedger(str(tmp_path / "ledger.jsonl"), eps_budget=1e6, delta=1e-5)
    first = run_stage4({"runs": {"p": entry}}, inputs, ledger)[0]
    text = (tmp_path / "pate/p/text").read_bytes()
    drawn = []
    real_draw = pate_labeling._draw
    monkeypatch.setattr(pate_labeling, "_draw", lambda *a: drawn.append(a) or real_draw(*a))
    with pytest.raises(RuntimeError, match="other settings"):
        run_stage4({"runs": {"p": {**entry, "queries": 4}}}, inputs, ledger)
    assert (tmp_path / "pate/p/text").read_bytes() == text and not drawn
    # a plurality whose fixed cost would take the additive deltas to the ledger's delta: refused, nothing drawn
    greedy = {**entry, "threshold_delta_share": 1.0 - DELTA_SHARE / 2}  # the first took DELTA_SHARE
    with pytest.raises(BudgetExceededError, match="refused before decoding"):
        run_stage4({"runs": {"q": greedy}}, inputs, ledger)
    assert not drawn and len(ledger.releases) == 1 and ledger.releases[0].release_id == first["release_id"]
