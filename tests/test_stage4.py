"""Stage 4 end to end on tiny toy teachers: released claims, the one ledger, reuse, crash safety, budget refusal,
a stop that cannot depend on the votes, the plurality of transcripts, the CLI."""

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("espnet2")

from espnet_pate.bin import pate_label  # noqa: E402
from espnet_pate.data.kaldi_dir import read_table  # noqa: E402
from espnet_pate.ensemble import label_context, pate_labeling, pate_release  # noqa: E402
from espnet_pate.ensemble.label_context import LabelContext  # noqa: E402
from espnet_pate.ensemble.pate_labeling import (  # noqa: E402
    PENDING,
    ConfigError,
    Stage4Inputs,
    resolve_entry,
    run_stage4,
)
from espnet_pate.ensemble.toy import HEAD_TRAINABLE, write_toy_setup  # noqa: E402
from espnet_pate.privacy.calibration import calibrate_gnmax_sigma  # noqa: E402
from espnet_pate.privacy.ledger import BudgetExceededError, PrivacyLedger  # noqa: E402
from espnet_pate.privacy.plurality import plurality_cost  # noqa: E402
from espnet_pate.report.privacy_json import read_privacy_info  # noqa: E402

RUNS = {
    "gnmax_tok": {"mechanism": "gnmax", "level": "token", "target_eps": 2500.0, "sigma_over_k": 0.125},
    "cgnmax_utt": {"mechanism": "confident_gnmax", "level": "utterance", "target_eps": 60.0,
                   "threshold_over_k": 0.6, "sigma1_over_k": 0.2, "sigma2_over_k": 0.125, "nbest": 3,
                   "beam_size": 3},
    "plurality": {"mechanism": "plurality", "target_eps": 1000.0, "queries": 5, "select": "shortest"},
}


def conf(runs=None):
    return {"defaults": {"batch_size": 2}, "runs": runs or RUNS}


def ledger(path, eps_budget=1e5):
    return PrivacyLedger(str(path), eps_budget=eps_budget, delta=1e-5)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_setup(tmp_path_factory.mktemp("toy"), num_teachers=3, num_utts=6)


def inputs(toy, out, unit="speaker", teachers=None):
    return Stage4Inputs(teacher_dirs=list(teachers or toy["teacher_dirs"]), data_dir=toy["data"], out_dir=Path(out),
                        unit=unit, public_model=toy["public"], command="pytest")


def test_end_to_end_released_claims_one_ledger_and_rerun(toy, tmp_path):
    out, lpath = tmp_path / "pate", tmp_path / "privacy_ledger.jsonl"
    reports = run_stage4(conf(), inputs(toy, out), ledger(lpath), seed=123)
    assert [r["name"] for r in reports] == list(RUNS)
    ids = set(read_table(toy["data"] / "wav.scp"))
    for r in reports:
        d = out / r["name"]
        for f in ("text", "privacy_report.json", "privacy_report.md", "privacy.json"):
            assert (d / f).exists(), f
        assert not (d / PENDING).exists() and r["run_status"] == "new"
        claim = r["claim"]
        assert claim["data_dependent"] is False and claim["unit"] == "speaker" and claim["delta"] == 1e-5
        assert 0 <= claim["epsilon"] <= r["target_eps"] + 1e-9 and "accountant" in claim
        assert r["seed_fixed"] and r["not_for_release"] and r["seed"] == 123
        assert "operator" in r["operator_diagnostics"]["note"]
        assert sum(r["operator_diagnostics"]["agreement_histogram"]["queries"]) == r["queries"] - r[
            "utterances"]["outcomes"].get("too_short", 0)
        labels = read_table(d / "text") if (d / "text").stat().st_size else {}
        assert set(labels) <= ids and r["utterances"]["written"] == len(labels)
        info = read_privacy_info(d)
        assert info["epsilon"] == claim["epsilon"] and info["data_dependent"] is False
        assert info["epsilon"] <= info["target_epsilon"] and info["unit"] == "speaker"
        md = (d / "privacy_report.md").read_text()
        assert "NOT FOR RELEASE" in md and "released claim" in md and "operator diagnostics" in md
    by_name = {r["name"]: r for r in reports}
    assert by_name["gnmax_tok"]["not_released"]["epsilon_data_dependent"] <= by_name["gnmax_tok"]["claim"][
        "epsilon"] + 1e-9
    plur = by_name["plurality"]
    assert plur["queries"] == 5 and plur["not_released"] is None
    ref = plurality_cost(plur["params"]["sigma"], plur["params"]["threshold"], 5, 1e-5)
    assert plur["claim"]["epsilon"] == pytest.approx(ref.eps)
    assert any(r["utterances"]["written"] > 0 for r in reports)
    # one ledger: every release, with the plurality's additive terms
    rel = PrivacyLedger(str(lpath)).releases
    assert [x.release_id for x in rel] == [r["release_id"] for r in reports]
    for r, x in zip(reports, rel):
        assert x.outputs == r["text_sha256"] and not x.data_dependent
    assert rel[2].delta_extra == pytest.approx(ref.delta_extra) and rel[2].eps_extra == pytest.approx(ref.eps_extra)
    # a rerun spends nothing and rewrites nothing
    before = lpath.read_bytes()
    texts = {r["name"]: (out / r["name"] / "text").read_bytes() for r in reports}
    again = run_stage4(conf(), inputs(toy, out), ledger(lpath), seed=123)
    assert [r["run_status"] for r in again] == ["reused"] * len(RUNS)
    assert lpath.read_bytes() == before
    assert {r["name"]: (out / r["name"] / "text").read_bytes() for r in again} == texts


def test_the_stop_cannot_depend_on_the_votes(toy, tmp_path):
    """Two teacher sets that differ in one teacher ask exactly the same queries of the same utterances."""
    from espnet_pate.ensemble.toy import build_toy_model, perturbed_copy, toy_args, write_experiment

    model = build_toy_model(0)
    model.load_state_dict(__import__("torch").load(toy["teacher_dirs"][2] / "valid.loss.ave.pth"))
    other = write_experiment(perturbed_copy(model, seed=77, scale=2.0, trainable=HEAD_TRAINABLE), toy_args(),
                             tmp_path / "other_teacher")
    neighbour = list(toy["teacher_dirs"][:2]) + [other]
    runs = {"plurality": RUNS["plurality"],
            "gnmax_utt": {"mechanism": "gnmax", "level": "utterance", "target_eps": 40.0, "sigma": 1.0,
                          "nbest": 3, "beam_size": 3}}
    asked, votes = [], []
    for i, teachers in enumerate((toy["teacher_dirs"], neighbour)):
        reps = run_stage4(conf(runs), inputs(toy, tmp_path / f"pate{i}", teachers=teachers),
                          ledger(tmp_path / f"ledger{i}.jsonl"), seed=5)
        asked.append([(r["queries"], r["utterances"]["considered"], r["claim"]["epsilon"]) for r in reps])
        votes.append([r["operator_diagnostics"]["agreement_histogram"]["queries"] for r in reps])
    assert votes[0] != votes[1]  # the neighbouring teacher does vote otherwise
    assert asked[0] == asked[1]


def test_plurality_releases_the_teachers_own_words(toy, tmp_path):
    """Identical teachers agree on every utterance: the released string is their own 1-best, whatever the
    public model's candidates say."""
    from espnet_pate.ensemble.own_transcripts import greedy_each
    from espnet_pate.ensemble.teachers import TeacherEnsemble

    teachers = [toy["teacher_dirs"][0]] * 3
    (r,) = run_stage4(conf({"plurality": dict(RUNS["plurality"], queries=6)}), inputs(toy, tmp_path / "p",
                      teachers=teachers), ledger(tmp_path / "l.jsonl"), seed=1)
    labels = read_table(tmp_path / "p" / "plurality" / "text") if r["utterances"]["written"] else {}
    assert len(labels) >= 4  # T ~ 1.9 at this budget: 3 agreeing teachers clear it almost surely
    ens = TeacherEnsemble.from_dirs(teachers)
    ctx = LabelContext(inputs(toy, tmp_path / "p", teachers=teachers), ens)
    for u, text in labels.items():
        (hyp,) = greedy_each(ens, ctx.encode([u]))
        assert text == ctx.detokenize(hyp[0])


def test_killed_between_ledger_and_text_does_not_spend_twice(toy, tmp_path, monkeypatch):
    out, lpath = tmp_path / "pate", tmp_path / "l.jsonl"
    one = {"gnmax_tok": RUNS["gnmax_tok"]}
    real_finalise = pate_release.finalise

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed after the ledger write")

    monkeypatch.setattr(pate_release, "finalise", killed)
    with pytest.raises(KeyboardInterrupt):
        run_stage4(conf(one), inputs(toy, out), ledger(lpath))
    ledger_bytes = lpath.read_bytes()
    assert not (out / "gnmax_tok" / "text").exists() and (out / "gnmax_tok" / PENDING / "text").exists()
    monkeypatch.setattr(pate_release, "finalise", real_finalise)
    monkeypatch.setattr(pate_labeling, "_draw", lambda *a, **k: pytest.fail("decoded again: fresh noise"))
    (r,) = run_stage4(conf(one), inputs(toy, out), ledger(lpath))
    assert r["run_status"] == "resumed" and lpath.read_bytes() == ledger_bytes
    rel = PrivacyLedger(str(lpath)).releases
    assert len(rel) == 1 and rel[0].outputs == pate_release.file_sha256(out / "gnmax_tok" / "text")
    (out / "gnmax_tok" / "text").unlink()  # labels lost after recording: refuse to pay twice silently
    with pytest.raises(RuntimeError, match="labels are lost"):
        run_stage4(conf(one), inputs(toy, out), ledger(lpath))


def test_killed_before_the_ledger_write_records_the_same_draw(toy, tmp_path, monkeypatch):
    out, lpath = tmp_path / "pate", tmp_path / "l.jsonl"
    one = {"plurality": RUNS["plurality"]}
    real_record = PrivacyLedger.record

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt("killed before the ledger write")

    monkeypatch.setattr(PrivacyLedger, "record", killed)
    with pytest.raises(KeyboardInterrupt):
        run_stage4(conf(one), inputs(toy, out), ledger(lpath))
    drawn = (out / "plurality" / PENDING / "text").read_bytes()
    monkeypatch.setattr(PrivacyLedger, "record", real_record)
    monkeypatch.setattr(pate_labeling, "_draw", lambda *a, **k: pytest.fail("re-rolled the noise"))
    (r,) = run_stage4(conf(one), inputs(toy, out), ledger(lpath))
    assert r["run_status"] == "new" and (out / "plurality" / "text").read_bytes() == drawn


def test_an_unrecorded_draw_is_not_replaced_by_one_of_other_settings(toy, tmp_path, monkeypatch):
    out, lpath = tmp_path / "pate", tmp_path / "l.jsonl"
    monkeypatch.setattr(PrivacyLedger, "record", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        run_stage4(conf({"plurality": RUNS["plurality"]}), inputs(toy, out), ledger(lpath))
    monkeypatch.undo()
    changed = {"plurality": dict(RUNS["plurality"], queries=4)}
    with pytest.raises(RuntimeError, match="unrecorded draw of other settings"):
        run_stage4(conf(changed), inputs(toy, out), ledger(lpath))


def test_over_budget_is_refused_and_the_draw_cannot_be_rerolled(toy, tmp_path, monkeypatch):
    out, lpath = tmp_path / "pate", tmp_path / "privacy_ledger.jsonl"
    one = {"gnmax_tok": RUNS["gnmax_tok"]}
    with pytest.raises(BudgetExceededError):
        run_stage4(conf(one), inputs(toy, out), ledger(lpath, eps_budget=0.5))
    assert not (out / "gnmax_tok" / "text").exists()
    assert PrivacyLedger(str(lpath)).releases == []
    drawn = (out / "gnmax_tok" / PENDING / "text").read_bytes()
    cfg, budget = tmp_path / "pate.yaml", tmp_path / "privacy.yaml"
    cfg.write_text(yaml.safe_dump(conf(one)))
    budget.write_text(yaml.safe_dump({"eps_budget": 0.5, "delta": 1e-5}))
    argv = ["--config", str(cfg), "--teachers", str(toy["teachers"]), "--data", str(toy["data"]),
            "--out", str(out), "--unit", "speaker", "--ledger", str(lpath), "--ledger-config", str(budget)]
    monkeypatch.setattr(pate_labeling, "_draw", lambda *a, **k: pytest.fail("re-rolled the noise"))
    assert pate_label.main(argv) == 3  # the same pending draw, refused again
    budget.write_text(yaml.safe_dump({"eps_budget": 1e5, "delta": 1e-5}))
    assert pate_label.main(argv) == 2  # the ledger's header fixed the budget: a larger one is refused
    assert (out / "gnmax_tok" / PENDING / "text").read_bytes() == drawn


def test_labeller_reads_the_withheld_transcripts_only_to_score(toy, tmp_path, monkeypatch):
    reads = []
    real_read, real_draw = pate_labeling.read_table, pate_labeling._draw
    phase = ["setup"]

    def spy_read(path, *a, **k):
        reads.append((phase[0], Path(path).name))
        return real_read(path, *a, **k)

    def spy_draw(*a, **k):
        phase[0] = "labelling"
        try:
            return real_draw(*a, **k)
        finally:
            phase[0] = "scoring"

    monkeypatch.setattr(pate_labeling, "read_table", spy_read)
    monkeypatch.setattr(label_context, "read_table", spy_read)
    monkeypatch.setattr(pate_labeling, "_draw", spy_draw)
    run_stage4(conf({"plurality": RUNS["plurality"]}), inputs(toy, tmp_path / "pate"), ledger(tmp_path / "l.jsonl"))
    assert ("scoring", "text") in reads
    assert all(name != "text" for ph, name in reads if ph != "scoring")


def test_cli_checks_the_partition_manifest(toy, tmp_path, capsys):
    cfg, budget = tmp_path / "pate.yaml", tmp_path / "privacy.yaml"
    cfg.write_text(yaml.safe_dump(conf({"gnmax_tok": RUNS["gnmax_tok"]})))
    budget.write_text(yaml.safe_dump({"eps_budget": 1e5, "delta": 1e-5}))
    manifest = tmp_path / "manifest.json"
    base = ["--config", str(cfg), "--teachers", *map(str, toy["teacher_dirs"]), "--data", str(toy["data"]),
            "--out", str(tmp_path / "pate"), "--ledger", str(tmp_path / "l.jsonl"), "--ledger-config", str(budget)]
    manifest.write_text(json.dumps({"unit": "speaker", "num_shards": 4}))
    assert pate_label.main(base + ["--partition-manifest", str(manifest)]) == 2
    manifest.write_text(json.dumps({"unit": "utterance", "num_shards": 3}))
    assert pate_label.main(base + ["--partition-manifest", str(manifest)]) == 0
    assert "gnmax_tok: new" in capsys.readouterr().out
    assert json.loads((tmp_path / "pate" / "gnmax_tok" / "privacy.json").read_text())["unit"] == "utterance"


def test_configuration_errors_and_calibration():
    with pytest.raises(ConfigError, match="unknown keys"):
        resolve_entry("x", {"mechanism": "gnmax", "target_eps": 1, "sigma": 1, "sigmaa": 2}, {}, 10)
    with pytest.raises(ConfigError, match="needs"):
        resolve_entry("x", {"mechanism": "confident_gnmax", "target_eps": 1, "sigma1": 1}, {}, 10)
    with pytest.raises(ConfigError, match="does not apply"):
        resolve_entry("x", {"mechanism": "lnmax", "target_eps": 1, "laplace_scale": 1, "sigma": 1}, {}, 10)
    with pytest.raises(ConfigError, match="data-dependent stop"):
        resolve_entry("x", {"mechanism": "gnmax", "target_eps": 1, "sigma": 1, "accounting": "data_dependent"},
                      {}, 10)
    with pytest.raises(ConfigError, match="queries"):
        resolve_entry("x", {"mechanism": "plurality", "target_eps": 8}, {}, 10)
    with pytest.raises(ConfigError, match="cost eps"):
        resolve_entry("x", {"mechanism": "plurality", "target_eps": 1, "queries": 100, "sigma": 5,
                            "threshold": 40}, {}, 10)
    auto = {"mechanism": "plurality", "target_eps": 8, "queries": "auto"}
    shadow = {"private": False, "num_teachers": 10, "plurality": {"top_counts": [9, 10, 8, 10]}}
    with pytest.raises(ConfigError, match="shadow teachers"):
        resolve_entry("x", auto, {}, 10)
    with pytest.raises(ConfigError, match="operator diagnostic"):
        resolve_entry("x", auto, {}, 10, dict(shadow, private=True))
    s = resolve_entry("x", auto, {}, 10, shadow, max_queries=50)
    assert 1 <= s.queries <= 50 and "shadow" in s.calibration["basis"]
    s = resolve_entry("x", {"mechanism": "gnmax", "target_eps": 8, "sigma_over_k": 0.125}, {"delta": 1e-6}, 20)
    assert s.noise == {"sigma": 2.5} and s.delta == 1e-6
    s = resolve_entry("x", {"mechanism": "gnmax", "target_eps": 8, "calibrate": {"planned_queries": 50}}, {}, 20)
    assert s.noise["sigma"] == pytest.approx(calibrate_gnmax_sigma(8, 1e-5, 50))
    s = resolve_entry("x", {"mechanism": "plurality", "target_eps": 8, "queries": 40}, {}, 40)
    assert plurality_cost(s.noise["sigma"], s.noise["threshold"], 40, 1e-5).eps <= 8
    for name, k in (("pate.yaml", 40), ("pate_debug.yaml", 4)):
        path = Path(__file__).resolve().parents[1] / "conf" / name
        c = pate_labeling.load_config(path)
        for run, entry in c["runs"].items():
            resolve_entry(run, entry, c.get("defaults") or {}, k, dict(shadow, num_teachers=k), max_queries=100)


def test_agreement_survey_releases_nothing_and_keeps_real_teachers_apart(toy, tmp_path):
    out = tmp_path / "pate"
    argv = ["--teachers", str(toy["teachers"]), "--data", str(toy["data"]), "--out", str(out),
            "--public-model", str(toy["public"]), "--unit", "speaker", "--survey", "4"]
    assert pate_label.main(argv) == 0
    survey = json.loads((out / "operator_diagnostics" / "agreement_survey.json").read_text())
    assert survey["num_teachers"] == 3 and survey["utterances"] == 4 and survey["private"]
    assert sum(survey["token"]["all"]["queries"]) == survey["token"]["queries"] > 0
    assert "utterance" in survey and len(survey["plurality"]["top_counts"]) == 4
    assert not (out / "agreement_survey.json").exists() and not list(out.glob("*.jsonl"))
    assert pate_label.main(argv + ["--shadow"]) == 0
    assert json.loads((out / "agreement_survey.json").read_text())["private"] is False


def _release_in_a_process(toy_dirs, out, lpath, queue):
    toy = {"teacher_dirs": [Path(d) for d in toy_dirs["teacher_dirs"]], "data": Path(toy_dirs["data"]),
           "public": Path(toy_dirs["public"])}
    (r,) = run_stage4(conf({"plurality": RUNS["plurality"]}), inputs(toy, out), ledger(lpath))
    queue.put((r["run_status"], r["release_id"], r["text_sha256"]))


def test_two_concurrent_runs_of_one_entry_publish_one_recorded_release(toy, tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    dirs = {"teacher_dirs": [str(d) for d in toy["teacher_dirs"]], "data": str(toy["data"]),
            "public": str(toy["public"])}
    procs = [ctx.Process(target=_release_in_a_process, args=(dirs, tmp_path / "pate", tmp_path / "l.jsonl", queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(r[0] for r in results) == ["new", "reused"]
    assert results[0][1:] == results[1][1:]
    rel = PrivacyLedger(str(tmp_path / "l.jsonl")).releases
    assert len(rel) == 1 and rel[0].outputs == results[0][2]
