"""Privacy audits (espnet_pate.attacks, stage 8) on real tiny ESPnet transducer models: members of an overfit
model are found, a model that never saw them gives chance, inversion of the overfit model gets closer to the
original, and an attack that beats a claimed epsilon fails loudly."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from espnet_pate.attacks import roc
from espnet_pate.attacks.dp_bound import PrivacyBoundViolation, bound_for, check_bound
from espnet_pate.attacks.similarity import logmel_correlation, mel_cepstral_distortion
from espnet_pate.report.audit_table import AUDIT_HEADING, replace_audit_section


# ----------------------------------------------------------------------------------------------- fast units
def test_auc_counts_ties_half_and_orders_scores():
    assert roc.auc([3, 4], [1, 2]) == 1.0
    assert roc.auc([1, 2], [3, 4]) == 0.0
    assert roc.auc([1, 1], [1, 1]) == 0.5


def test_operating_point_keeps_fpr_at_most_the_target():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(1, 1, 500), rng.normal(0, 1, 1000)
    for f in (0.1, 0.01, 0.001):
        op = roc.operating_point(members, nonmembers, f)
        assert op.fpr <= f and op.fp == int(f * 1000)


def test_clopper_pearson_covers_and_is_exact_at_the_edges():
    assert roc.clopper_pearson(0, 20)[0] == 0.0 and roc.clopper_pearson(20, 20)[1] == 1.0
    lo, hi = roc.clopper_pearson(0, 60)
    assert hi == pytest.approx(1 - 0.025 ** (1 / 60), rel=1e-6)  # closed form at k = 0


def test_bound_check_fails_loudly_on_a_constructed_violation():
    members, nonmembers = np.arange(100, 200.0), np.arange(0, 1000.0) / 100  # perfect separation
    summary = roc.summarise(members, nonmembers, reps=50)
    with pytest.raises(PrivacyBoundViolation, match="beats the released claim"):
        check_bound(summary, bound_for({"epsilon": 1.0, "delta": 1e-5, "unit": "speaker"}, "utterance", 8), "toy")
    # the same attack is allowed by a large epsilon, and not bounded at all by epsilon inf
    rows = check_bound(summary, bound_for({"epsilon": 10.0, "delta": 1e-5, "unit": "speaker"}, "utterance", 8))
    assert all(r["ok"] for r in rows)
    assert bound_for({"epsilon": math.inf, "unit": "utterance"}, "utterance", 8) is None


def test_many_checks_widen_each_interval_so_a_correct_claim_rarely_stops_the_stage():
    members, nonmembers = np.arange(100, 120.0), np.arange(0, 100.0)  # 20 of 20 found at 0 of 100 false
    summary = roc.summarise(members, nonmembers, fprs=(0.01,), reps=20)
    bound = bound_for({"epsilon": 2.5, "delta": 0.0, "unit": "speaker"}, "utterance", 8)
    with pytest.raises(PrivacyBoundViolation):
        check_bound(summary, bound, family=1)
    rows = check_bound(summary, bound, family=56)  # Bonferroni over 56 checks: the same counts are not enough
    assert rows[0]["ok"] and rows[0]["confidence"] == pytest.approx(1 - 0.05 / 56)


def test_an_utterance_claim_bounds_speakers_by_group_privacy():
    b = bound_for({"epsilon": 0.5, "delta": 1e-6, "unit": "utterance"}, "speaker", 4)
    assert b["epsilon"] == 2.0 and b["delta"] == pytest.approx(4 * math.exp(1.5) * 1e-6)
    assert bound_for({"epsilon": 0.5, "delta": 1e-6, "unit": "speaker"}, "utterance", 4)["epsilon"] == 0.5


def test_similarity_of_identical_and_different_spectra():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 20))
    assert logmel_correlation(x, x) == pytest.approx(1.0)
    assert mel_cepstral_distortion(x, x) == pytest.approx(0.0)
    assert abs(logmel_correlation(x, rng.normal(size=(40, 20)))) < 0.2  # length aligned, unrelated
    assert mel_cepstral_distortion(x, x + rng.normal(size=x.shape)) > 1.0


def test_audit_section_is_replaced_not_duplicated():
    table = "# Results\n\n| a |\n\nCommand:\n\n```sh\nx\n```\n"
    once = replace_audit_section(table, f"{AUDIT_HEADING}\n\nfirst\n")
    twice = replace_audit_section(once, f"{AUDIT_HEADING}\n\nsecond\n")
    assert twice.count(AUDIT_HEADING) == 1 and "second" in twice and "first" not in twice
    assert twice.index(AUDIT_HEADING) < twice.index("Command:") and twice.startswith("# Results")


# ------------------------------------------------------------------------ real ESPnet models (slow: minutes)
def write_set(out: Path, utterances: dict, prefix: str = ""):
    """A Kaldi directory of toy utterances ({utt: (wave, speaker, words)}), names prefixed with ``prefix``."""
    import soundfile

    from espnet_pate.data.kaldi_dir import write_kaldi_dir

    (out / "wav").mkdir(parents=True, exist_ok=True)
    wav_scp, utt2spk, text, data = {}, {}, {}, []
    for utt, (wave, spk, words) in utterances.items():
        utt, spk = f"{prefix}{utt}", f"{prefix}{spk}"
        soundfile.write(out / "wav" / f"{utt}.wav", wave, 16000)
        wav_scp[utt], utt2spk[utt], text[utt] = str(out / "wav" / f"{utt}.wav"), spk, words
        data.append((wave, words))
    write_kaldi_dir(out, wav_scp, utt2spk, text)
    return data


def member_split(num_utts: int, num_speakers: int, member_speakers: int, seed: int):
    """One pool of toy utterances; a seeded random choice of speakers are the members, the rest non-members
    (the usual membership experiment: both sides from the same distribution)."""
    from espnet_pate.ensemble.toy import toy_utterances

    pool = toy_utterances(num_utts, seed, max_seconds=0.6, num_speakers=num_speakers)
    chosen = set(np.random.default_rng(seed).choice(sorted({v[1] for v in pool.values()}), member_speakers,
                                                    replace=False))
    return ({u: v for u, v in pool.items() if v[1] in chosen}, {u: v for u, v in pool.items() if v[1] not in chosen})


def fitted_model(out: Path, data, seed: int, steps: int, epsilon=None, unit="speaker"):
    """A real ESPnet transducer (the project's task, toy size) fitted to ``data`` and saved as an experiment."""
    from espnet_pate.ensemble.toy import build_toy_model, fit_toy_model, toy_args, write_experiment
    from espnet_pate.report.privacy_json import write_privacy_info

    args = toy_args()
    model = build_toy_model(seed, sharpness=1.0, blank_bias=0.0, args=args)
    fit_toy_model(model, [w for w, _ in data], [t for _, t in data], steps=steps, lr=1e-2, seed=seed)
    write_experiment(model, args, out)
    if epsilon is not None:
        write_privacy_info(out, epsilon=epsilon, delta=1e-5, unit=unit, mechanism="dpsgd")
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from espnet_pate.ensemble.toy import toy_utterances

    root = tmp_path_factory.mktemp("audit")
    member_utts, nonmember_utts = member_split(48, 12, 3, seed=1)  # 12 members (3 speakers), 36 non-members
    members = write_set(root / "members", member_utts)
    write_set(root / "nonmembers", nonmember_utts)
    public = [write_set(root / f"public{k}", toy_utterances(12, 10 + k, max_seconds=0.6), f"p{k}")
              for k in range(3)]
    models = {
        # claims epsilon 0.5 for the bound check; trained without any noise: the claim is false
        "overfit": fitted_model(root / "exp" / "overfit", members, 0, steps=120, epsilon=0.5),
        "unseen": fitted_model(root / "exp" / "unseen", public[0], 0, steps=80, epsilon=0.0, unit="none"),
    }
    shadows = root / "shadows"
    for k in (1, 2):
        fitted_model(shadows / f"teacher_{k - 1}", public[k], k, steps=80)
    return {"root": root, "models": models, "shadows": [shadows / "teacher_0", shadows / "teacher_1"]}


def audit(setup, name):
    from espnet_pate.attacks.membership_audit import audit_model

    root = setup["root"]
    return audit_model(setup["models"][name], setup["shadows"], root / "members", root / "nonmembers",
                       root / "cache", reps=200)


def result(record, attack, unit):
    return next(r for r in record["results"] if r["attack"] == attack and r["unit"] == unit)


@pytest.mark.slow
def test_the_statistic_is_espnets_own_transducer_loss(setup):
    import soundfile
    import torch

    from espnet_pate.asr.rnnt_loss import RNNTLoss
    from espnet_pate.attacks.transducer_nll import AuditedModel, utterance_nlls
    from espnet_pate.data.kaldi_dir import read_kaldi_dir

    audited = AuditedModel(setup["models"]["overfit"])
    nlls = utterance_nlls(audited, setup["root"] / "members")
    kdir = read_kaldi_dir(setup["root"] / "members")
    audited.model.criterion_transducer = RNNTLoss(blank_id=0)
    for utt in kdir.utt_ids[:3]:
        speech = torch.as_tensor(soundfile.read(kdir.wav_scp[utt], dtype="float32")[0])[None]
        labels = audited.token_ids(utt, kdir.text[utt])
        with torch.no_grad():
            stats = audited.model(speech, torch.tensor([speech.shape[1]]), labels[None],
                                  torch.tensor([labels.numel()]))[1]
        assert nlls[utt][0] == pytest.approx(float(stats["loss_transducer"]), rel=1e-4)
        assert nlls[utt][1] == labels.numel()


@pytest.mark.slow
def test_members_of_an_overfit_model_are_found_and_its_false_claim_is_caught(setup):
    record = audit(setup, "overfit")
    for attack in ("loss", "lira"):
        r = result(record, attack, "utterance")
        assert r["auc"] > 0.85 and r["auc_ci"][0] > 0.6, (attack, r["auc"], r["auc_ci"])
    assert any("beats the released claim (epsilon 0.5" in v for v in record["violations"])


@pytest.mark.slow
def test_a_model_that_never_saw_the_members_gives_chance(setup):
    record = audit(setup, "unseen")
    for attack in ("loss", "lira"):
        r = result(record, attack, "utterance")
        assert abs(r["auc"] - 0.5) < 0.25 and r["auc_ci"][0] < 0.5 < r["auc_ci"][1], (attack, r["auc"], r["auc_ci"])
    assert record["violations"] == []  # epsilon 0: TPR <= FPR holds within the intervals


@pytest.mark.slow
def test_the_membership_command_writes_every_record_then_exits_3_on_a_violation(setup, capsys):
    from espnet_pate.bin import audit_membership

    root = setup["root"]
    with pytest.raises(SystemExit) as exc:
        audit_membership.main(["--exp-root", str(root / "exp"), "--members", str(root / "members"), "--nonmembers",
                               str(root / "nonmembers"), "--shadow-models", str(root / "shadows"), "--out",
                               str(root / "audit" / "membership"), "--bootstrap", "50"])
    assert exc.value.code == 3
    assert "PRIVACY AUDIT FAILED" in capsys.readouterr().err
    written = sorted(p.name for p in (root / "audit" / "membership").glob("*.json"))
    assert written == ["overfit.json", "unseen.json"]
    assert json.loads((root / "audit" / "membership" / "overfit.json").read_text())["violations"]
    from espnet_pate.bin import audit_report

    results, diagnostics = root / "RESULTS.md", root / "RESULTS_operator_diagnostics.md"
    results.write_text("# Results\n\n| released |\n\nCommand:\n\n```sh\nx\n```\n")
    diagnostics.write_text("# Operator diagnostics\n\n| teachers |\n\nCommand:\n\n```sh\nx\n```\n")
    audit_report.main(["--audit-dir", str(root / "audit"), "--results", str(results)])
    rows = {" | ".join(line.split(" | ")[i] for i in (0, 2, 3)): line for line in
            (root / "audit" / "RESULTS.md").read_text().splitlines() if line.startswith("| overfit") or
            line.startswith("| unseen")}
    assert "**VIOLATED**" in rows["| overfit | loss | utterance"]
    assert rows["| unseen | loss | utterance"].endswith("| within |")
    assert AUDIT_HEADING not in results.read_text()  # audits are operator diagnostics: never beside the claims
    teachers, audit = diagnostics.read_text().split(AUDIT_HEADING)
    assert "| teachers |" in teachers and "overfit" in audit and "Command:" in audit


@pytest.mark.slow
def test_inversion_of_the_overfit_model_is_closer_to_the_original(setup):
    from espnet_pate.attacks.inversion import InversionConfig
    from espnet_pate.attacks.inversion_audit import audit_inversion

    record, arrays = audit_inversion(setup["models"], setup["root"] / "members", 3, InversionConfig(steps=100))
    over, unseen = record["models"]["overfit"], record["models"]["unseen"]
    assert over["correlation"] > unseen["correlation"], (over["correlation"], unseen["correlation"])
    assert set(arrays) == {"original", "overfit", "unseen"}
    assert "never released" in record["speaker_classifier"]["note"]


def test_likelihood_leaves_its_input_alone_through_global_mvn(tmp_path):
    """ESPnet's GlobalMVN normalises in place without gradients: the features an inversion returns (and the
    originals it is compared with) must stay log-mel, not the normalised copy."""
    import torch

    from espnet_pate.attacks.transducer_nll import nll_from_feats
    from espnet_pate.ensemble.toy import build_toy_model, toy_args

    stats = tmp_path / "feats_stats.npz"
    np.savez(stats, count=np.array(100.0), sum=np.full(40, -1200.0), sum_square=np.full(40, 16000.0))
    args = toy_args()
    args.normalize, args.normalize_conf = "global_mvn", {"stats_file": str(stats)}
    model = build_toy_model(0, args=args)
    feats = torch.randn(1, 40, 40) - 12.0
    before = feats.clone()
    with torch.no_grad():
        nll = nll_from_feats(model, feats, torch.tensor([3, 4, 5]))
    assert torch.equal(feats, before) and torch.isfinite(nll)
