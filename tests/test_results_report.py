"""Stage 7's RESULTS.md, operator diagnostics, plots and ledger check, on a small experiment tree in the recipe's
formats: privacy.json through privacy_json, a real ledger with real recorded releases, score.json files."""
import json

import pytest

from espnet_pate.bin import privacy_info
from espnet_pate.dpsgd.accounting import rdp_curve
from espnet_pate.privacy.conversion import eps_from_rdp
from espnet_pate.privacy.digests import file_sha256
from espnet_pate.privacy.ledger import PrivacyLedger
from espnet_pate.privacy.rdp_gnmax import rdp_gnmax_data_independent
from espnet_pate.report.ledger_check import ResultsLedgerMismatch, check_results_against_ledger, released_table
from espnet_pate.report.privacy_json import write_privacy_info
from espnet_pate.report.results_writer import write_tables

DECODE = "decode_decode_transducer"
MODEL = "valid.loss.ave.pth"
DELTA = 1e-5
ACCOUNTANT = "RDP on order grid ref2018-297, improved conversion"


def _scores(system_dir, dev, test, recall=None):
    for name, wer in (("dev", dev), ("test", test)):
        out = system_dir / DECODE / name
        out.mkdir(parents=True)
        score = {"wer": wer, "substitutions": 1, "deletions": 0, "insertions": 0, "ref_words": 100, "utterances": 10}
        if recall is not None:
            score["keywords"] = {"recall": recall, "hits": 1, "occurrences": 4}
        (out / "score.json").write_text(json.dumps(score))


def _dpsgd(exp, ledger, name, test_wer, sigma):
    d = exp / name
    d.mkdir()
    (d / MODEL).write_bytes(name.encode())  # the model file whose digest the ledger records
    segments = [(0.05, sigma, 200)]
    rdp = rdp_curve(segments, ledger.orders)
    eps, _ = eps_from_rdp(rdp, DELTA, ledger.orders, ledger.conversion)
    ledger.record(f"dpsgd_model/{name}", "dpsgd", {"sigma": sigma}, rdp, 200, data_dependent=False,
                  outputs=f"sha256:{file_sha256(d / MODEL)}",
                  details={"epsilon_own": eps, "delta_own": DELTA, "system_dir": str(d)})
    write_privacy_info(d, epsilon=eps, delta=DELTA, unit="speaker", mechanism="dpsgd", accountant="RDP (dp_accounting)",
                       data_dependent=False, target_epsilon=8.0)
    _scores(d, test_wer + 1, test_wer)
    return eps


def _student(exp, ledger, name, test_wer, labels, sigma=40.0, queries=30, source="public_unlabeled"):
    """A stage-4 release (recorded, privacy.json, privacy_report.json) and the student that inherits its claim."""
    release = exp / "pate_head_k40" / name
    release.mkdir(parents=True)
    rdp = queries * rdp_gnmax_data_independent(sigma, ledger.orders)
    eps, _ = eps_from_rdp(rdp, DELTA, ledger.orders, ledger.conversion)
    rec, _ = ledger.record(f"pate_labels/{name}", "gnmax", {"sigma": sigma, "name": name}, rdp, queries,
                           data_dependent=False, outputs=f"sha256:{name}", details={"eps": eps, "delta": DELTA})
    write_privacy_info(release, epsilon=eps, target_epsilon=8.0, delta=DELTA, unit="speaker",
                       mechanism="PATE gnmax (utterance level, 40 teachers)", accountant=ACCOUNTANT,
                       data_dependent=False, pseudo_label_wer=10.0 + labels / 100, labelled_fraction=labels / 1000,
                       not_for_release=False, release_id=rec.release_id)
    (release / "privacy_report.json").write_text(json.dumps({"utterances": {"total": 1000, "written": labels}}))
    student = exp / f"student_{name}"
    privacy_info.main([str(student), "--inherit", str(release), "--public_data", source])
    _scores(student, test_wer + 1, test_wer, recall=20.0)
    return eps


@pytest.fixture
def tree(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    ledger = PrivacyLedger(str(exp / "privacy_ledger.jsonl"), eps_budget=100.0, delta=DELTA)
    for name, eps, mech, unit, wer in (("public_only", 0, "public_only", "none", 60.0),
                                       ("nonprivate", float("inf"), "none", "utterance", 10.0)):
        write_privacy_info(exp / name, epsilon=eps, delta=0 if eps == 0 else None, mechanism=mech, unit=unit)
        _scores(exp / name, wer + 1, wer)
    eps = {"dpsgd": _dpsgd(exp, ledger, "dpsgd_eps8", 40.0, 1.0),
           "head": _dpsgd(exp, ledger, "dpsgd_head_eps8", 50.0, 1.1)}
    for seed, (wer, labels) in enumerate(((30.0, 100), (32.0, 110), (34.0, 120)), 1):
        eps["student"] = _student(exp, ledger, f"gnmax_eps8_seed{seed}", wer, labels)
    eps["diff"] = _student(exp, ledger, "gnmax_diff_eps8", 45.0, 50, sigma=60.0, source="public_unlabeled_diff")
    teacher = exp / "teachers_head_k40" / "teacher_0"
    write_privacy_info(teacher, mechanism="teacher")
    _scores(teacher, 21.0, 20.0)
    survey = exp / "pate_head_k40" / "operator_diagnostics" / "agreement_survey.json"
    survey.parent.mkdir(parents=True)
    survey.write_text(json.dumps({"num_teachers": 40, "utterances": 2, "plurality": {"top_counts": [40, 20]}}))
    systems = sorted(p.parent for p in exp.glob("**/privacy.json") if not p.parent.parent.name.startswith("pate_"))
    return {"exp": exp, "ledger": ledger, "systems": systems, "eps": eps, "results": tmp_path / "RESULTS.md"}


def _write(tree):
    return write_tables(tree["exp"], tree["systems"], DECODE, ["dev", "test"], tree["results"], "cmd",
                        tree["ledger"].path, MODEL)


def _rows(text):
    return {r["system"]: r for r in released_table(text)}


def test_results_table_numbers_repeats_and_both_dpsgd_parts(tree):
    rows = _rows(_write(tree))
    s = rows["student_gnmax_eps8"]
    assert s["runs"] == "3" and s["public audio"] == "public_unlabeled" and s["method"] == "PATE gnmax"
    assert s["WER test %"] == "32.00 ± 2.00" and s["labels"] == "110 ± 10"
    assert s["withheld words test %"] == "20.0 ± 0.0" and s["pseudo-label WER %"] == "11.10 ± 0.10"
    # relative as the study defines it, (WER_dpsgd - WER) / WER_dpsgd, and the share of the gap to non-private
    assert s["vs DP-SGD full: rel. WER %"] == "+20.0" and s["vs DP-SGD full: gap closed %"] == "+26.7"  # 8/40, 8/30
    assert s["vs DP-SGD head: rel. WER %"] == "+36.0" and s["vs DP-SGD head: gap closed %"] == "+45.0"  # 18/50, 18/40
    d = rows["student_gnmax_diff_eps8"]
    assert d["public audio"] == "public_unlabeled_diff" and d["vs DP-SGD full: rel. WER %"] == "-12.5"  # worse
    assert rows["dpsgd_head_eps8"]["method"] == "DP-SGD head" and rows["dpsgd_eps8"]["method"] == "DP-SGD full"
    assert rows["dpsgd_eps8"]["vs DP-SGD full: rel. WER %"] == "-" and rows["dpsgd_eps8"]["labels"] == "-"
    assert rows["public_only"]["epsilon"] == "0" and rows["nonprivate"]["epsilon"] == "inf"
    assert s["epsilon"] == f"{tree['eps']['student']:.4g}" and s["delta"] == "1e-05" and s["accountant"] == "RDP"


def test_operator_diagnostics_are_kept_out_of_results(tree):
    text = _write(tree)
    diagnostics = (tree["results"].parent / "RESULTS_operator_diagnostics.md").read_text()
    assert "teacher" not in "\n".join(released_table(text)[i]["system"] for i in range(len(released_table(text))))
    assert "teachers_head_k40/teacher_0 | 21.00 | 20.00" in diagnostics
    assert "| pate_head_k40/operator_diagnostics/agreement_survey.json | 40 | 2 | 75.0 | - | - |" in diagnostics
    assert "student_" not in diagnostics and "agreement" not in text.split("Command:")[0].replace(
        "agreement, audits", "")


def test_composed_cost_is_the_ledger_total(tree):
    text = _write(tree)
    total = tree["ledger"].summary()
    assert f"(6 releases in the ledger): epsilon {total['eps']:.4g} at delta 1e-05." in text
    assert total["eps"] > tree["eps"]["student"]


def test_plots_are_written_beside_results(tree):
    _write(tree)
    for name in ("RESULTS_wer_vs_epsilon.png", "RESULTS_labels_vs_epsilon.png"):
        png = tree["results"].parent / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_the_wer_plot_has_a_colour_per_method_a_style_per_source_and_ticks_at_the_budgets_run():
    from espnet_pate.report.results_plots import _figure, _series

    def group(method, source, eps, wer):
        return {"kind": "pate" if method.startswith("PATE") else "dpsgd", "method": method, "source": source,
                "privacy": {"epsilon": eps}, "wer": {"test": (wer, 0.1)}}
    groups = [group("DP-SGD full", "-", e, 7.0) for e in (0.1, 2, 7.92)]
    groups += [group("PATE gnmax", s, e, 6.0) for s in ("public_unlabeled", "public_unlabeled_diff") for e in (2, 8)]
    series = _series(groups, lambda g: g["wer"].get("test"))
    assert list(series) == [("DP-SGD full", "-"), ("PATE gnmax", "public_unlabeled"),
                            ("PATE gnmax", "public_unlabeled_diff")]
    fig = _figure(series, "WER test %", "t", {"public-only (epsilon 0)": 6.4}, ["DP-SGD full", "PATE gnmax"])
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [0.1, 2.0, 8.0]
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    similar, diff = lines["PATE gnmax, public_unlabeled"], lines["PATE gnmax, public_unlabeled_diff"]
    assert similar.get_color() == diff.get_color() != lines["DP-SGD full"].get_color()
    assert similar.get_linestyle() != diff.get_linestyle()
    legend = ax.get_legend()
    assert legend.get_bbox_to_anchor().x0 > ax.get_window_extent().x1 - 1  # outside the axes: it hides no point


def test_every_epsilon_matches_its_ledger_entry(tree):
    _write(tree)  # checks on write
    checked = check_results_against_ledger(tree["results"], tree["exp"], tree["ledger"].path, MODEL)
    assert checked == 8  # 6 rows, one of them 3 seeds


@pytest.mark.parametrize("old, new", [("STUDENT_EPS | 1e-05 | speaker | RDP | 3 |",
                                       "0.5 | 1e-05 | speaker | RDP | 3 |"),
                                      ("| 1e-05 | speaker | RDP | 3 |", "| 1e-06 | speaker | RDP | 3 |"),
                                      ("(6 releases", "(5 releases"), ("epsilon TOTAL_EPS at", "epsilon 7 at")])
def test_an_edited_results_file_fails_the_check(tree, old, new):
    text = _write(tree)
    old = old.replace("STUDENT_EPS", f"{tree['eps']['student']:.4g}").replace(
        "TOTAL_EPS", f"{tree['ledger'].summary()['eps']:.4g}")
    assert old in text
    tree["results"].write_text(text.replace(old, new, 1))
    with pytest.raises(ResultsLedgerMismatch):
        check_results_against_ledger(tree["results"], tree["exp"], tree["ledger"].path, MODEL)


def test_a_claim_that_differs_from_the_ledger_stops_stage7(tree):
    student = tree["exp"] / "student_gnmax_diff_eps8"
    info = json.loads((student / "privacy.json").read_text())
    write_privacy_info(student, **dict(info, epsilon=info["epsilon"] / 2))  # smaller than what the ledger paid
    with pytest.raises(ResultsLedgerMismatch, match="student_gnmax_diff_eps8"):
        _write(tree)


def test_a_release_missing_from_the_ledger_stops_stage7(tree):
    (tree["exp"] / "dpsgd_eps8" / MODEL).write_bytes(b"retrained, not recorded")
    with pytest.raises(ResultsLedgerMismatch, match="not in the ledger"):
        _write(tree)


def test_seeds_with_different_claims_are_not_repeats(tree):
    student = tree["exp"] / "student_gnmax_eps8_seed2"
    info = json.loads((student / "privacy.json").read_text())
    write_privacy_info(student, **dict(info, public_data="public_unlabeled_diff"))
    with pytest.raises(ValueError, match="not repeats"):
        _write(tree)


def test_private_systems_without_a_ledger_stop_stage7(tree):
    with pytest.raises(ResultsLedgerMismatch, match="no privacy ledger"):
        write_tables(tree["exp"], tree["systems"], DECODE, ["dev", "test"], tree["results"], "cmd",
                     str(tree["exp"] / "missing.jsonl"), MODEL)


def test_public_data_is_recorded_only_with_an_inherited_claim(tree):
    with pytest.raises(SystemExit):
        privacy_info.main([str(tree["exp"] / "x"), "--mechanism", "none", "--public_data", "public_unlabeled"])
    info = json.loads((tree["exp"] / "student_gnmax_diff_eps8" / "privacy.json").read_text())
    assert info["public_data"] == "public_unlabeled_diff" and info["release_id"]
