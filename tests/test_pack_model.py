"""Stage 9: a released system packed with espnet2.bin.pack, unpacked offline by espnet_model_zoo's ModelDownloader,
loaded by the stock Speech2Text, with its privacy card; what may not be released is refused."""
import json
import math
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from espnet_pate.bin.pack_model import main as pack_main
from espnet_pate.ensemble.toy import build_toy_model, fitted_toy_state, toy_args, toy_utterances, write_experiment
from espnet_pate.privacy.digests import file_sha256
from espnet_pate.privacy.ledger import PrivacyLedger
from espnet_pate.report.privacy_card import CARD_FILE, NO_GUARANTEE
from espnet_pate.report.privacy_json import write_privacy_info

ROOT = Path(__file__).resolve().parents[1]
STUDENT_CLAIM = dict(epsilon=2.99, target_epsilon=4.0, delta=1e-5, unit="speaker",
                     mechanism="PATE plurality (utterance level, 4 teachers)", accountant="RDP, improved conversion",
                     data_dependent=False, pseudo_label_wer=12.5, labelled_fraction=0.1, not_for_release=False)


def toy_experiment(root: Path, name: str) -> Path:
    """A tiny fitted transducer whose config references a token list file and global-MVN statistics by absolute
    path, as a recipe's config references dump/ and exp/asr_stats_public/ (identity statistics: the fit holds)."""
    files = root / "shared_files"
    files.mkdir(parents=True, exist_ok=True)
    args = toy_args()
    (files / "tokens.txt").write_text("\n".join(args.token_list) + "\n")
    n_mels = args.frontend_conf["n_mels"]
    np.savez(files / "feats_stats.npz", count=np.array(10.0), sum=np.zeros(n_mels), sum_square=np.full(n_mels, 10.0))
    args.normalize, args.normalize_conf = "global_mvn", {"stats_file": str(files / "feats_stats.npz")}
    model = build_toy_model(0, args=args)
    missing, unexpected = model.load_state_dict(fitted_toy_state(0), strict=False)
    assert not unexpected and all(k.startswith("normalize.") for k in missing)
    args.token_list = str(files / "tokens.txt")
    args.train_data_path_and_name_and_type = [["data/student_plurality_eps4/wav.scp", "speech", "sound"]]
    args.valid_data_path_and_name_and_type = [["data/dev/wav.scp", "speech", "sound"]]
    args.init_param = ["exp/public_only/valid.loss.ave.pth"]
    system = write_experiment(model, args, root / "exp" / name)
    (system / "train.log").write_text(f"# local/train_asr.sh --outdir exp/{name} --config conf/train_student.yaml\n"
                                      f"# Started at today\n")
    return system


def write_score(system: Path, name: str, wer: float, stale: bool = False):
    out = system / "decode_decode_transducer" / name
    out.mkdir(parents=True)
    (out / "text").write_text("utt1 a b\n")
    (out / "score.json").write_text(json.dumps({"wer": wer, "substitutions": 1, "deletions": 0, "insertions": 0,
                                                "ref_words": 5, "utterances": 2}))
    if stale:  # decoded by an earlier model
        old = (system / "valid.loss.ave.pth").stat().st_mtime - 100
        os.utime(out / "text", (old, old))


def unpack(zip_path: Path, cache: Path) -> Path:
    """The folder ModelDownloader unpacks a local zip into, offline."""
    from espnet_model_zoo.downloader import ModelDownloader

    files = ModelDownloader(cachedir=cache).download_and_unpack(str(zip_path))
    return Path(files["asr_train_config"]).parents[2]


def unpacked_card(zip_path: Path, cache: Path) -> dict:
    return json.loads((unpack(zip_path, cache) / CARD_FILE).read_text())


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A PATE student with its inherited claim, one recorded release in the ledger, and stage 7's scores."""
    root = tmp_path_factory.mktemp("pack")
    system = toy_experiment(root, "student_plurality_eps4")
    ledger = PrivacyLedger(str(root / "exp" / "privacy_ledger.jsonl"), eps_budget=8, delta=1e-5)
    release, _ = ledger.record("pate_labels/plurality_eps4", "plurality", {"sigma": 5.0}, ledger.orders / 4.5,
                               queries=40, data_dependent=False, outputs="labels-sha256")
    write_privacy_info(system, release_id=release.release_id, **STUDENT_CLAIM)
    write_score(system, "test", 41.5)
    write_score(system, "dev", 99.0, stale=True)
    return {"root": root, "system": system, "ledger": ledger, "release_id": release.release_id}


def test_student_pack_unpacks_offline_decodes_and_carries_its_card(student, tmp_path, monkeypatch):
    from espnet2.bin.asr_transducer_inference import Speech2Text
    from espnet_model_zoo.downloader import ModelDownloader

    from espnet_pate.asr.decode import load_speech2text

    root, system = student["root"], student["system"]
    monkeypatch.chdir(root)  # as run.sh does: relative paths from the recipe's folder
    out = root / "packed" / "student_plurality_eps4.zip"
    assert pack_main(["exp/student_plurality_eps4", "--out", "packed/student_plurality_eps4.zip",
                      "--ledger", "exp/privacy_ledger.jsonl"]) == 0
    wave = next(iter(toy_utterances(4, 0, max_seconds=0.6).values()))[0]
    with torch.inference_mode():
        before = load_speech2text(system)(wave)[0]
    packed = tmp_path / "copy" / out.name  # the zip alone, away from the experiment and its files
    packed.parent.mkdir()
    shutil.copyfile(out, packed)
    shutil.rmtree(root / "packed")
    away = root / "shared_files.away"  # the token list and statistics the config named: only the zip's remain
    os.rename(root / "shared_files", away)
    try:
        files = ModelDownloader(cachedir=tmp_path / "cache").download_and_unpack(str(packed))
        assert set(files) == {"asr_train_config", "asr_model_file"}
        unpacked = Path(files["asr_train_config"]).parents[2]
        assert unpacked.is_relative_to(tmp_path / "cache")
        with torch.inference_mode():
            after = Speech2Text(**files)(wave)[0]
    finally:
        os.rename(away, root / "shared_files")
    assert list(after.yseq) == list(before.yseq) and len(after.yseq) > 1

    card = json.loads((unpacked / CARD_FILE).read_text())
    readme = (unpacked / "README.md").read_text()
    assert card["privacy_guarantee"] and card["mechanism"] == STUDENT_CLAIM["mechanism"]
    assert (card["epsilon"], card["delta"], card["unit"], card["data_dependent"]) == (2.99, 1e-5, "speaker", False)
    together = card["released_together"]
    assert together["releases"] == 1 and not together["data_dependent"]
    assert math.isclose(together["epsilon"], student["ledger"].total().eps) and together["epsilon"] > 0
    assert card["wer"] == {"decode_transducer": {"test": {"wer": 41.5, "substitutions": 1, "deletions": 0,
                                                          "insertions": 0, "ref_words": 5, "utterances": 2}}}
    assert card["data"] == {"train": ["student_plurality_eps4"], "valid": ["dev"], "init": ["public_only"]}
    assert card["command"].startswith("local/train_asr.sh --outdir exp/student_plurality_eps4")
    assert card["model_sha256"] == file_sha256(files["asr_model_file"])
    assert "## Privacy card" in readme and "| epsilon | 2.99 |" in readme and NO_GUARANTEE not in readme
    with zipfile.ZipFile(packed) as z:
        names = set(z.namelist())
        text = b"".join(z.read(n) for n in names if not n.endswith(".pth"))
    assert {"meta.yaml", "README.md", CARD_FILE, "exp/student_plurality_eps4/config.yaml",
            "data/token_list/tokens.txt", "exp/asr_stats/train/feats_stats.npz"} <= names
    assert student["release_id"].encode() not in text  # a function of the sensitive data
    assert str(root).encode() not in text  # no path of this machine


@pytest.mark.parametrize("claim, reason", [
    (None, "privacy.json: missing"),
    (dict(mechanism="teacher", note="trained without DP on one shard of sensitive: never released"), "teacher"),
    (dict(STUDENT_CLAIM, data_dependent=True), "data_dependent"),
    (dict(STUDENT_CLAIM, epsilon=float("inf")), "no finite epsilon"),
    (dict(STUDENT_CLAIM, not_for_release=True), "not_for_release"),
    (dict(mechanism="transcripts:data/x/text"), "not a privacy mechanism"),
    (dict(epsilon=float("inf"), mechanism="none", unit="utterance"), "--allow-nonprivate"),
])
def test_systems_without_a_mechanism_are_refused(student, tmp_path, capsys, claim, reason):
    system = tmp_path / "exp" / "teacher_0"
    shutil.copytree(student["system"], system)
    (system / "privacy.json").unlink()
    if claim is not None:
        write_privacy_info(system, **claim)
    out = tmp_path / "teacher_0.zip"
    assert pack_main([str(system), "--out", str(out), "--ledger", student["ledger"].path]) == 2
    assert reason in capsys.readouterr().err and not out.exists()


def test_a_release_missing_from_the_ledger_is_refused(student, tmp_path, capsys):
    other = PrivacyLedger(str(tmp_path / "other_ledger.jsonl"), eps_budget=8, delta=1e-5)
    out = tmp_path / "s.zip"
    assert pack_main([str(student["system"]), "--out", str(out), "--ledger", other.path]) == 2
    assert "not recorded in" in capsys.readouterr().err and not out.exists()


def test_nonprivate_packs_only_when_allowed_and_says_so(student, tmp_path):
    system = tmp_path / "exp" / "nonprivate"
    shutil.copytree(student["system"], system)
    write_privacy_info(system, epsilon=float("inf"), mechanism="none", unit="utterance",
                       note="fine-tuned on all of sensitive without DP")
    out = tmp_path / "nonprivate.zip"
    assert pack_main([str(system), "--out", str(out), "--ledger", student["ledger"].path, "--allow-nonprivate"]) == 0
    unpacked = unpack(out, tmp_path / "cache")
    card = json.loads((unpacked / CARD_FILE).read_text())
    assert card["privacy_guarantee"] is False and card["epsilon"] == "inf" and NO_GUARANTEE in card["warning"]
    assert "released_together" not in card
    readme = (unpacked / "README.md").read_text()
    assert readme.index(NO_GUARANTEE) < readme.index("## Privacy card")


def test_stage9_packs_released_systems_skips_the_rest_and_resumes(student, tmp_path):
    expdir = tmp_path / "exp"
    shutil.copytree(student["root"] / "exp", expdir)
    shutil.copytree(student["system"], expdir / "nonprivate")
    write_privacy_info(expdir / "nonprivate", epsilon=float("inf"), mechanism="none", unit="utterance")
    shutil.copytree(student["system"], expdir / "teachers_head_k4" / "teacher_0")
    write_privacy_info(expdir / "teachers_head_k4" / "teacher_0", mechanism="teacher")

    def stage9():
        proc = subprocess.run(["./run.sh", "--stage", "9", "--stop-stage", "9", "--expdir", str(expdir)], cwd=ROOT,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    log = stage9()
    assert sorted(p.name for p in (expdir / "packed").iterdir()) == ["student_plurality_eps4.zip"]
    assert f"not packed: {expdir}/nonprivate" in log and "teacher_0" not in log
    assert f"skip (done: {expdir}/packed/student_plurality_eps4.zip)" in stage9()


def test_public_only_packs_without_a_ledger(student, tmp_path):
    system = tmp_path / "exp" / "public_only"
    shutil.copytree(student["system"], system)
    write_privacy_info(system, epsilon=0, delta=0, unit="none", mechanism="public_only",
                       note="trained on public_labeled only")
    out = tmp_path / "public_only.zip"
    assert pack_main([str(system), "--out", str(out), "--ledger", str(tmp_path / "no_ledger.jsonl")]) == 0
    card = unpacked_card(out, tmp_path / "cache")
    assert card["privacy_guarantee"] and not card["trained_on_sensitive_data"] and card["epsilon"] == 0
    assert "released_together" not in card and not (tmp_path / "no_ledger.jsonl").exists()


def test_dpsgd_model_is_found_in_the_ledger_by_its_model_digest(student, tmp_path, capsys):
    system = tmp_path / "exp" / "dpsgd_eps8"
    shutil.copytree(student["system"], system)
    write_privacy_info(system, epsilon=7.9, delta=1e-5, unit="speaker", mechanism="dpsgd", data_dependent=False,
                       accountant="rdp", target_epsilon=8.0, met_target=True)
    ledger_path = tmp_path / "privacy_ledger.jsonl"
    shutil.copyfile(student["ledger"].path, ledger_path)
    out = tmp_path / "dpsgd_eps8.zip"
    assert pack_main([str(system), "--out", str(out), "--ledger", str(ledger_path)]) == 2
    assert "not recorded in" in capsys.readouterr().err
    ledger = PrivacyLedger(str(ledger_path))
    ledger.record("DP-SGD model dpsgd_eps8", "dpsgd", {"noise_multiplier": 1.0}, ledger.orders / 20.0, queries=100,
                  data_dependent=False, outputs=f"sha256:{file_sha256(system / 'valid.loss.ave.pth')}")
    assert pack_main([str(system), "--out", str(out), "--ledger", str(ledger_path)]) == 0
    together = unpacked_card(out, tmp_path / "cache")["released_together"]
    assert together["releases"] == 2 and math.isclose(together["epsilon"], ledger.total().eps)
    assert together["epsilon"] > student["ledger"].total().eps
