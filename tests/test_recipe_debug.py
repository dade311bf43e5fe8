"""The debug configuration of the recipe end to end: real synthesis, ESPnet training and decoding.

Runs `./run.sh --debug true` once into a temporary folder (a few minutes: the `recipe` fixture of conftest.py),
then checks what a user would read.
"""
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NUM_TEACHERS = 4  # conftest.py's RECIPE_NUM_TEACHERS
TEACHERS = f"teachers_head_k{NUM_TEACHERS}"  # run.sh's default trainable part


pytestmark = pytest.mark.slow  # the second test layer: tests/run_tests.sh runs it after the fast one


def wer(system_dir: Path, set_name: str) -> float:
    return json.loads((system_dir / "decode_decode_transducer" / set_name / "score.json").read_text())["wer"]


def untrained_wer(recipe, set_name: str) -> float:
    """WER of the same architecture before any training, decoded the same way."""
    from espnet_pate.asr.decode import decode_data_dir, load_speech2text
    from espnet_pate.data.kaldi_dir import read_table
    from espnet_pate.report.scoring import score_wer

    trained = recipe["expdir"] / "public_only"
    untrained = trained.parent / "untrained"
    untrained.mkdir(exist_ok=True)
    (untrained / "config.yaml").write_text((trained / "config.yaml").read_text())
    from espnet_pate.asr.transducer_task import PateASRTransducerTask

    model, _ = PateASRTransducerTask.build_model_from_file(untrained / "config.yaml", None, "cpu")
    torch.save(model.state_dict(), untrained / "valid.loss.ave.pth")
    hyps = decode_data_dir(load_speech2text(untrained, ROOT / "conf/decode_transducer.yaml"),
                           recipe["datadir"] / set_name)
    return score_wer(read_table(recipe["datadir"] / set_name / "text"), hyps).wer


def test_stages_leave_done_markers(recipe):
    exp = recipe["expdir"]
    assert (exp / "public_only" / ".done").exists()
    teachers = sorted((exp / TEACHERS).glob("teacher_*"))
    assert len(teachers) == NUM_TEACHERS and all((t / ".done").exists() for t in teachers)


def test_training_beats_untrained_model(recipe):
    exp = recipe["expdir"]
    before = untrained_wer(recipe, "test")
    public = wer(exp / "public_only", "test")
    assert public < before, (public, before)
    teacher_wers = [wer(t, "test") for t in sorted((exp / TEACHERS).glob("teacher_*"))]
    assert min(teacher_wers) < before


def test_head_teachers_share_the_whole_public_encoder(recipe):
    """Frozen means frozen: BatchNorm statistics too, so lock-step decoding runs the encoder once for all K."""
    from espnet_pate.ensemble.teachers import TeacherEnsemble, teacher_dirs_in

    ensemble = TeacherEnsemble.from_dirs(teacher_dirs_in(recipe["expdir"] / TEACHERS))
    info = ensemble.describe()
    assert info["teacher_stages"] == [] and info["shared_stages"], info


def test_results_table_lists_every_system(recipe):
    table = (recipe["expdir"] / "RESULTS.md").read_text()
    released, diagnostics = table, (recipe["expdir"] / "RESULTS_operator_diagnostics.md").read_text()
    assert re.search(r"^\| public_only \| public-only \| - \| 0 \| 0 \|", released, re.M)
    assert re.search(r"^\| student_gnmax_utt \| PATE gnmax", released, re.M)
    assert "everything released from the sensitive data set together" in released.lower()
    for k in range(NUM_TEACHERS):
        assert f"| {TEACHERS}/teacher_{k} |" in diagnostics and f"{TEACHERS}/teacher_{k} |" not in released
    assert "python -m espnet_pate.bin.decode_and_score" in table
    assert "withheld words test %" in table  # from the corpus's withheld_words.txt
    assert (recipe["expdir"] / "public_only" / "RESULTS.md").exists()
    assert re.search(r"^\| student_gnmax_utt \| PATE gnmax \| public_unlabeled \|", released, re.M)
    for plot in ("RESULTS_wer_vs_epsilon.png", "RESULTS_labels_vs_epsilon.png"):
        assert (recipe["expdir"] / plot).stat().st_size > 0
    # stage 7 checked every epsilon against the ledger; the check still holds on the files as they are
    from espnet_pate.report.ledger_check import check_results_against_ledger

    assert check_results_against_ledger(recipe["expdir"] / "RESULTS.md", recipe["expdir"],
                                        recipe["expdir"] / "privacy_ledger.jsonl", "valid.loss.ave.pth") > 0


def test_rerun_skips_finished_work(recipe):
    args = recipe["args"][:]
    args[args.index("--stage") + 1] = "1"
    args[args.index("--stop-stage") + 1] = "3"
    stamp = (recipe["expdir"] / "public_only" / "valid.loss.ave.pth").stat().st_mtime
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skip" in proc.stdout
    assert (recipe["expdir"] / "public_only" / "valid.loss.ave.pth").stat().st_mtime == stamp


def test_every_model_loads_in_stock_speech2text(recipe):
    from espnet2.bin.asr_transducer_inference import Speech2Text

    for model in recipe["expdir"].glob("**/valid.loss.ave.pth"):
        if model.parent.name == "untrained":
            continue
        Speech2Text(asr_train_config=str(model.parent / "config.yaml"), asr_model_file=str(model), beam_size=1)


def test_one_ledger_holds_every_pate_release_with_its_released_claim(recipe):
    from espnet_pate.privacy.ledger import PrivacyLedger
    from espnet_pate.report.privacy_json import read_privacy_info

    ledger = PrivacyLedger(str(recipe["expdir"] / "privacy_ledger.jsonl"))
    pate = {r.what.split("/", 1)[1]: r for r in ledger.releases if r.what.startswith("pate_labels/")}
    assert "plurality_utt" in pate and len(pate) >= 4
    for name, release in pate.items():
        info = read_privacy_info(recipe["expdir"] / f"pate_head_k{NUM_TEACHERS}" / name)
        assert info["epsilon"] == release.details["eps"] and info["data_dependent"] is False
        student = recipe["expdir"] / f"student_{name}"
        if (student / ".done").exists():
            assert read_privacy_info(student)["epsilon"] == info["epsilon"]


def test_stage9_packs_released_systems_only(recipe):
    packed = {p.stem for p in (recipe["expdir"] / "packed").glob("*.zip")}
    assert "public_only" in packed and any(p.startswith("student_") for p in packed)
    assert "nonprivate" not in packed and not any("teacher" in p for p in packed)


def test_stage8_audits_every_released_model_apart_from_the_released_figures(recipe):
    exp = recipe["expdir"]
    audited = {p.stem for p in (exp / "audit" / "membership").glob("*.json")}
    assert {"public_only", "nonprivate", "dpsgd_eps8"} <= audited and any(a.startswith("student_") for a in audited)
    assert not any("teacher" in a for a in audited)
    assert (exp / "audit" / "inversion" / "inversion.png").stat().st_size > 0
    released = (exp / "RESULTS.md").read_text()
    _, audit = (exp / "RESULTS_operator_diagnostics.md").read_text().split(
        "## Privacy audits (operator diagnostics, not released)")
    assert "| nonprivate | inf (utterance) | lira | speaker |" in audit and "lira" not in released
    assert "never released" in (exp / "audit" / "RESULTS.md").read_text()


def test_dpsgd_on_the_teachers_part_changes_only_decoder_and_joint(recipe):
    """Stage 6's DP-SGD over the frozen public encoder: same footing as the head teachers, and released."""
    exp = recipe["expdir"]
    public = torch.load(exp / "public_only" / "valid.loss.ave.pth", map_location="cpu")
    head = torch.load(exp / "dpsgd_head_eps8" / "valid.loss.ave.pth", map_location="cpu")
    assert set(public) == set(head)
    # (BatchNorm's num_batches_tracked is a counter, not a weight: the DP model's frozen statistics reset it)
    frozen = [k for k in public if k.startswith(("encoder.", "ctc_lin.")) and not k.endswith("num_batches_tracked")]
    trained = [k for k in public if k.startswith(("decoder.", "joint_network."))]
    assert frozen and trained
    assert all(torch.equal(public[k], head[k]) for k in frozen)
    assert any(not torch.equal(public[k], head[k]) for k in trained)
    claim = json.loads((exp / "dpsgd_head_eps8" / "privacy.json").read_text())
    assert claim["mechanism"] == "dpsgd" and 0 < claim["epsilon"] <= 8.0
