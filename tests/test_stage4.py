"""Stage 4 end to end on tiny toy teachers: reports, ledger reuse, crash safety, budget refusal, the CLI."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("espnet2")

from espnet_pate.bin import pate_label  # noqa: E402
from espnet_pate.data.kaldi_dir import read_table  # noqa: E402
from espnet_pate.ensemble import pate_labeling  # noqa: E402
from espnet_pate.ensemble.pate_labeling import (  # noqa: E402
    PENDING,
    ConfigError,
    Stage4Inputs,
    resolve_entry,
    run_stage4,
)
from espnet_pate.ensemble.toy import write_toy_setup  # noqa: E402
from espnet_pate.privacy.calibration import calibrate_gnmax_sigma  # noqa: E402
from espnet_pate.privacy.ledger import BudgetExceededError, LedgerMismatchError, PrivacyLedger  # noqa: E402
from espnet_pate.report.results import read_privacy_info  # noqa: E402

RUNS = {
    "gnmax_tok": {"mechanism": "gnmax", "level": "token", "target_eps": 2500.0, "sigma_over_k": 0.125},
    "lnmax_tok": {"mechanism": "lnmax", "level": "token", "target_eps": 40.0, "laplace_scale": 0.5,
                  "stop_at_budget": True},
    "cgnmax_utt": {"mechanism": "confident_gnmax", "level": "utterance", "target_eps": 60.0,
                   "threshold_over_k": 0.6, "sigma1_over_k": 0.2, "sigma2_over_k": 0.125, "nbest": 3,
                   "beam_size": 3},
}


def conf(eps_budget=1e5, runs=None):
    return {"ledger": {"eps_budget": eps_budget, "delta": 1e-5}, "defaults": {"batch_size": 2},
            "runs": runs or RUNS}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_setup(tmp_path_factory.mktemp("toy"), num_teachers=3, num_utts=6)


def inputs(toy, out, unit="speaker"):
    return Stage4Inputs(teacher_dirs=list(toy["teacher_dirs"]), data_dir=toy["data"], out_dir=Path(out), unit=unit,
                        public_model=toy["public"], command="pytest")


def test_end_to_end_reports_ledger_and_rerun(toy, tmp_path):
    out = tmp_path / "pate"
    reports = run_stage4(conf(), inputs(toy, out), seed=123)
    assert [r["name"] for r in reports] == list(RUNS)
    ids = set(read_table(toy["data"] / "wav.scp"))
    ref = read_table(toy["data"] / "text")
    for r in reports:
        d = out / r["name"]
        for f in ("text", "privacy_report.json", "privacy_report.md", "privacy.json"):
            assert (d / f).exists(), f
        assert not (d / PENDING).exists()
        assert r["run_status"] == "new"
        for key in ("epsilon", "delta", "privacy_unit", "mechanism", "params", "queries", "labelled_fraction",
                    "data_dependent", "seed_fixed", "not_for_release", "agreement_histogram", "pseudo_label_wer",
                    "accountant", "budget", "release_id", "utterances"):
            assert key in r, key
        eps = r["epsilon"]
        for key in ("data_dependent", "data_dependent_classic", "data_independent", "data_independent_classic"):
            assert eps[key] >= 0
        assert eps["data_dependent"] <= eps["data_independent"] + 1e-9  # the data-dependent bound is a min
        assert r["privacy_unit"] == "speaker" and r["delta"] == 1e-5 and r["data_dependent"] is True
        assert r["seed_fixed"] and r["not_for_release"] and r["seed"] == 123
        assert r["epsilon_headline"] <= r["target_eps"] + 1e-9
        assert sum(r["agreement_histogram"]["queries"]) == r["queries"]
        labels = read_table(d / "text") if (d / "text").stat().st_size else {}
        assert set(labels) <= ids and r["utterances"]["written"] == len(labels)
        assert r["labelled_fraction"] == pytest.approx(len(labels) / len(ids))
        if labels:
            from espnet_pate.report.scoring import score_wer

            assert r["pseudo_label_wer"] == pytest.approx(score_wer({u: ref[u] for u in labels}, labels).wer)
        info = read_privacy_info(d)
        for key in ("epsilon", "target_epsilon", "delta", "unit", "mechanism", "accountant", "data_dependent",
                    "pseudo_label_wer", "labelled_fraction"):
            assert key in info, key
        assert info["epsilon"] <= info["target_epsilon"]
        assert info["epsilon"] == r["epsilon_headline"] and info["unit"] == "speaker"
        md = (d / "privacy_report.md").read_text()
        assert "NOT FOR RELEASE" in md and "agreement" in md
    assert any(r["utterances"]["written"] > 0 for r in reports)
    assert any(r["pseudo_label_wer"] is not None for r in reports)
    ledger = PrivacyLedger(str(out / "ledger.jsonl"))
    assert [rel.release_id for rel in ledger.releases] == [r["release_id"] for r in reports]
    for r, rel in zip(reports, ledger.releases):
        assert rel.outputs == r["text_sha256"] and rel.data_dependent
    # a rerun spends nothing and rewrites nothing
    before = (out / "ledger.jsonl").read_bytes()
    texts = {r["name"]: (out / r["name"] / "text").read_bytes() for r in reports}
    again = run_stage4(conf(), inputs(toy, out), seed=123)
    assert [r["run_status"] for r in again] == ["reused"] * len(RUNS)
    assert (out / "ledger.jsonl").read_bytes() == before
    assert {r["name"]: (out / r["name"] / "text").read_bytes() for r in again} == texts
    # privacy.json is refreshed from the recorded report (e.g. one written before a field was added)
    stale = out / reports[0]["name"] / "privacy.json"
    stale.write_text(json.dumps({"epsilon": reports[0]["epsilon_headline"]}))
    run_stage4(conf(), inputs(toy, out), seed=123)
    assert read_privacy_info(stale.parent)["target_epsilon"] == reports[0]["target_eps"]


def test_killed_between_ledger_and_text_does_not_spend_twice(toy, tmp_path, monkeypatch):
    out = tmp_path / "pate"
    one = {"gnmax_tok": RUNS["gnmax_tok"]}
    real_finalise = pate_labeling._finalise

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed after the ledger write")

    monkeypatch.setattr(pate_labeling, "_finalise", killed)
    with pytest.raises(KeyboardInterrupt):
        run_stage4(conf(runs=one), inputs(toy, out))
    ledger_bytes = (out / "ledger.jsonl").read_bytes()
    assert not (out / "gnmax_tok" / "text").exists() and (out / "gnmax_tok" / PENDING / "text").exists()
    monkeypatch.setattr(pate_labeling, "_finalise", real_finalise)
    monkeypatch.setattr(pate_labeling, "_draw", lambda *a, **k: pytest.fail("decoded again: fresh noise"))
    (r,) = run_stage4(conf(runs=one), inputs(toy, out))
    assert r["run_status"] == "resumed"
    assert (out / "ledger.jsonl").read_bytes() == ledger_bytes
    rel = PrivacyLedger(str(out / "ledger.jsonl")).releases
    assert len(rel) == 1 and rel[0].outputs == pate_labeling._sha256_file(out / "gnmax_tok" / "text")
    # labels lost after recording: refuse to decode again rather than pay twice silently
    (out / "gnmax_tok" / "text").unlink()
    with pytest.raises(RuntimeError, match="labels are lost"):
        run_stage4(conf(runs=one), inputs(toy, out))


def test_killed_before_the_ledger_write_records_the_same_draw(toy, tmp_path, monkeypatch):
    out = tmp_path / "pate"
    one = {"lnmax_tok": RUNS["lnmax_tok"]}
    real_record = PrivacyLedger.record

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt("killed before the ledger write")

    monkeypatch.setattr(PrivacyLedger, "record", killed)
    with pytest.raises(KeyboardInterrupt):
        run_stage4(conf(runs=one), inputs(toy, out))
    drawn = (out / "lnmax_tok" / PENDING / "text").read_bytes()
    monkeypatch.setattr(PrivacyLedger, "record", real_record)
    monkeypatch.setattr(pate_labeling, "_draw", lambda *a, **k: pytest.fail("re-rolled the noise"))
    (r,) = run_stage4(conf(runs=one), inputs(toy, out))
    assert r["run_status"] == "new" and (out / "lnmax_tok" / "text").read_bytes() == drawn


def test_over_budget_is_refused_and_the_draw_cannot_be_rerolled(toy, tmp_path, monkeypatch):
    out = tmp_path / "pate"
    one = {"gnmax_tok": RUNS["gnmax_tok"]}
    with pytest.raises(BudgetExceededError):
        run_stage4(conf(eps_budget=0.5, runs=one), inputs(toy, out))
    assert not (out / "gnmax_tok" / "text").exists()
    assert PrivacyLedger(str(out / "ledger.jsonl")).releases == []
    drawn = (out / "gnmax_tok" / PENDING / "text").read_bytes()
    cfg = tmp_path / "pate.yaml"
    cfg.write_text(yaml.safe_dump(conf(eps_budget=0.5, runs=one)))
    argv = ["--config", str(cfg), "--teachers", str(toy["teachers"]), "--data", str(toy["data"]),
            "--out", str(out), "--unit", "speaker"]
    assert pate_label.main(argv) == 3
    # with a larger budget the same draw is recorded, not a fresh one; the ledger's header fixes its budget, so a
    # larger one needs a new ledger (this one holds no release)
    monkeypatch.setattr(pate_labeling, "_draw", lambda *a, **k: pytest.fail("re-rolled the noise"))
    cfg.write_text(yaml.safe_dump(conf(eps_budget=1e5, runs=one)))
    with pytest.raises(LedgerMismatchError, match="eps=0.5"):
        pate_label.main(argv)
    (out / "ledger.jsonl").unlink()
    assert pate_label.main(argv) == 0
    assert (out / "gnmax_tok" / "text").read_bytes() == drawn


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
    monkeypatch.setattr(pate_labeling, "_draw", spy_draw)
    run_stage4(conf(runs={"gnmax_tok": RUNS["gnmax_tok"]}), inputs(toy, tmp_path / "pate"))
    assert ("scoring", "text") in reads
    assert all(name != "text" for ph, name in reads if ph != "scoring")


def test_cli_checks_the_partition_manifest(toy, tmp_path, capsys):
    cfg = tmp_path / "pate.yaml"
    cfg.write_text(yaml.safe_dump(conf(runs={"gnmax_tok": RUNS["gnmax_tok"]})))
    manifest = tmp_path / "manifest.json"
    base = ["--config", str(cfg), "--teachers", *map(str, toy["teacher_dirs"]), "--data", str(toy["data"]),
            "--out", str(tmp_path / "pate")]
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
    s = resolve_entry("x", {"mechanism": "gnmax", "target_eps": 8, "sigma_over_k": 0.125}, {"delta": 1e-6}, 20)
    assert s.noise == {"sigma": 2.5} and s.delta == 1e-6
    s = resolve_entry("x", {"mechanism": "gnmax", "target_eps": 8, "calibrate": {"planned_queries": 50}}, {}, 20)
    assert s.noise["sigma"] == pytest.approx(calibrate_gnmax_sigma(8, 1e-5, 50))
    for name in ("pate.yaml", "pate_debug.yaml"):
        path = Path(__file__).resolve().parents[1] / "conf" / name
        c = pate_labeling.load_config(path)
        for run, entry in c["runs"].items():
            resolve_entry(run, entry, c.get("defaults") or {}, 40 if name == "pate.yaml" else 4)


def test_agreement_survey_releases_nothing(toy, tmp_path, capsys):
    cfg = tmp_path / "pate.yaml"
    cfg.write_text(yaml.safe_dump(conf()))
    out = tmp_path / "pate"
    argv = ["--config", str(cfg), "--teachers", str(toy["teachers"]), "--data", str(toy["data"]), "--out", str(out),
            "--public-model", str(toy["public"]), "--unit", "speaker", "--survey", "4"]
    assert pate_label.main(argv) == 0
    survey = json.loads((out / "agreement_survey.json").read_text())
    assert survey["num_teachers"] == 3 and survey["utterances"] == 4 and survey["private"]
    assert sum(survey["token"]["all"]["queries"]) == survey["token"]["queries"] > 0
    assert "utterance" in survey
    assert not (out / "ledger.jsonl").exists()
