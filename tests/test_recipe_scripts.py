"""The recipe's shell mechanics: option parsing and the local job runner."""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bash(script: str, *args: str):
    return subprocess.run(["bash", "-c", script, "script", *args], cwd=ROOT, capture_output=True, text=True)


PARSE = 'stage=1\nnice_name=a\nflag=false\n. utils/parse_options.sh\necho "$stage|$nice_name|$flag|$*"'


def test_parse_options_sets_known_options_and_keeps_positionals():
    out = bash(PARSE, "--stage", "3", "--nice-name", "b c", "--flag=true", "pos")
    assert out.returncode == 0 and out.stdout.strip() == "3|b c|true|pos"


def test_parse_options_rejects_unknown_options_and_bad_booleans():
    unknown = bash(PARSE, "--stagee", "3")
    assert unknown.returncode != 0 and "unknown option --stagee" in unknown.stderr
    bad = bash(PARSE, "--flag", "yes")
    assert bad.returncode != 0 and "true or false" in bad.stderr


def test_run_local_runs_jobs_logs_each_and_reports_failures(tmp_path):
    log = tmp_path / "log.JOB.txt"
    ok = subprocess.run(["utils/run_local.sh", "--max-jobs-run", "2", "JOB=0:3", str(log), "echo", "job", "JOB"],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0
    for k in range(4):
        text = (tmp_path / f"log.{k}.txt").read_text()
        assert f"job {k}\n" in text and "Ended (code 0)" in text
    bad = subprocess.run(["utils/run_local.sh", "JOB=1:2", str(log), "bash", "-c", "exit $((JOB - 1))"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "log.2.txt" in bad.stderr and "log.1.txt" not in bad.stderr


def test_run_local_runs_one_job_per_listed_word(tmp_path):
    log = tmp_path / "NAME.log"
    ok = subprocess.run(["utils/run_local.sh", "--max-jobs-run", "2", "NAME=gnmax_eps4,lnmax_eps8", str(log),
                         "echo", "student_NAME"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    for name in ("gnmax_eps4", "lnmax_eps8"):
        assert f"student_{name}\n" in (tmp_path / f"{name}.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gnmax_eps4.log", "lnmax_eps8.log"]


def test_run_sh_help_lists_stages():
    out = subprocess.run(["./run.sh", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "--stage N --stop-stage N" in out.stdout and "Stages:" in out.stdout


def test_run_sh_refuses_invalid_stage_ranges():
    for args in (["--stage", "5", "--stop-stage", "3"], ["--stage", "x"], ["--stop-stage", "12"]):
        out = subprocess.run(["./run.sh", *args], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 2 and "invalid stage range" in out.stderr, args


def test_run_sh_names_the_stage_to_run_when_inputs_are_missing(tmp_path):
    out = subprocess.run(["./run.sh", "--debug", "true", "--stage", "4", "--stop-stage", "4", "--expdir",
                          str(tmp_path / "exp"), "--datadir", str(tmp_path / "data")], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 1 and "run stage 3 first" in out.stdout


def test_debug_and_default_runs_never_share_outputs():
    if (ROOT / "exp_debug" / "public_only" / ".done").exists():
        pytest.skip("this checkout has a finished debug run: stage 6 would train instead of stopping")
    out = subprocess.run(["./run.sh", "--debug", "true", "--stage", "6", "--stop-stage", "6"], cwd=ROOT,
                         capture_output=True, text=True)
    assert "exp_debug/public_only/.done is missing" in out.stdout  # not exp/: the default run's folder


def test_train_asr_names_the_feature_normalisations_it_knows(tmp_path):
    args = ["--outdir", str(tmp_path / "m"), "--config", "c.yaml", "--train", "d"]
    out = subprocess.run(["local/train_asr.sh", *args, "--feats_normalize", "cmvn"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 1 and "--feats_normalize must be global_mvn or utterance_mvn, got 'cmvn'" in out.stderr
    out = subprocess.run(["local/train_asr.sh", *args, "--feats_normalize", "utterance_mvn",
                          "--dumpdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and "tokens.txt" in out.stderr  # accepted: stops at the next missing input
