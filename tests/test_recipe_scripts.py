"""The recipe's shell mechanics: option parsing and the local job runner."""
import os
import re
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


def run(*args: str):
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True)


def test_run_local_runs_jobs_one_to_n_logs_each_and_reports_failures(tmp_path):
    log = tmp_path / "log.JOB.txt"
    ok = run("utils/run_local.sh", "--max-jobs-run", "2", "JOB=1:4", str(log), "echo", "job", "JOB")
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"log.{k}.txt" for k in range(1, 5)]
    for k in range(1, 5):
        text = (tmp_path / f"log.{k}.txt").read_text()
        assert text.startswith(f"# echo job {k}\n# Started at ") and f"\njob {k}\n" in text
        assert "Ended (code 0)" in text
    bad = run("utils/run_local.sh", "JOB=1:3", str(log), "bash", "-c", "exit $((JOB == 2 ? 5 : 0))")
    assert bad.returncode == 1 and "log.2.txt" in bad.stderr and "log.1.txt" not in bad.stderr
    assert "Ended (code 5)" in (tmp_path / "log.2.txt").read_text()
    # progress on the terminal: each parallel job's end
    assert re.search(r"job 2 of 3 ended \(code 5, \d+ s\): .*log\.2\.txt", bad.stdout), bad.stdout


def test_run_local_runs_at_most_max_jobs_at_once(tmp_path):
    script = f"mkdir {tmp_path}/running.JOB; sleep 0.3; ls {tmp_path} | grep -c running; rmdir {tmp_path}/running.JOB"
    ok = run("utils/run_local.sh", "--max-jobs-run", "2", "JOB=1:4", str(tmp_path / "l/JOB.log"), "bash", "-c", script)
    assert ok.returncode == 0, ok.stderr
    seen = [int((tmp_path / f"l/{k}.log").read_text().splitlines()[2]) for k in range(1, 5)]
    assert max(seen) == 2, seen


def test_run_local_takes_kaldi_job_ranges_only(tmp_path):
    log = str(tmp_path / "JOB.log")
    for spec in ("JOB=0:3", "JOB=3:2", "STUDENT=gnmax_eps4,lnmax_eps8", "JOB=a:b"):
        out = run("utils/run_local.sh", spec, log, "true")
        assert out.returncode == 1 and f"invalid job range '{spec}'" in out.stderr, spec
    assert not list(tmp_path.iterdir())
    one = run("utils/run_local.sh", "JOB=7", log, "echo", "JOB")
    assert one.returncode == 0 and "\n7\n" in (tmp_path / "7.log").read_text()


def test_run_local_accepts_and_ignores_cluster_resource_options(tmp_path):
    out = run("utils/run_local.sh", "--gpu", "1", "--mem", "2G", "--num_threads", "4", "--max-jobs-run", "2", "JOB=1:2",
              str(tmp_path / "JOB.log"), "echo", "ok")
    assert out.returncode == 0, out.stderr
    assert all("\nok\n" in (tmp_path / f"{k}.log").read_text() for k in (1, 2))


def test_run_listed_runs_the_named_job_of_line_job_in_its_own_log(tmp_path):
    names = tmp_path / "student_list"
    names.write_text("gnmax_eps4\nlnmax_eps8\n")
    out = run("utils/run_local.sh", "--max-jobs-run", "2", "JOB=1:3", str(tmp_path / "log/train_student.JOB.log"),
              "utils/run_listed.sh", "STUDENT", str(names), "JOB", str(tmp_path / "student_STUDENT/train.log"),
              "echo", "trains", "student_STUDENT")
    # two names, three jobs: job 3 has no line and fails, naming its log
    assert out.returncode == 1 and "train_student.3.log" in out.stderr and "train_student.1.log" not in out.stderr
    assert f"{names} has no line 3" in (tmp_path / "log/train_student.3.log").read_text()
    for name in ("gnmax_eps4", "lnmax_eps8"):
        text = (tmp_path / f"student_{name}/train.log").read_text()
        # the model's own log starts with its real command: the privacy card quotes it (report/privacy_card.py)
        assert text.startswith(f"# echo trains student_{name}\n") and "Ended (code 0)" in text


def test_run_sh_runs_parallel_jobs_as_kaldi_ranges_from_one():
    text = (ROOT / "run.sh").read_text()
    calls = [line for line in text.splitlines() if "${train_cmd}" in line and not line.lstrip().startswith("#")]
    assert calls and all("=0:" not in c for c in calls)
    ranges = [c for c in calls if re.search(r"\b[A-Z_]+=", c)]
    assert len(ranges) == 3 and all(re.search(r"\bJOB=1:\$\{#todo\[@\]\} ", c) for c in ranges), ranges


def test_cmd_sh_picks_the_runner_by_cmd_backend():
    show = '. ./cmd.sh && echo "$train_cmd|$decode_cmd"'
    assert bash(show).stdout.strip() == "utils/run_local.sh|utils/run_local.sh"
    slurm = subprocess.run(["bash", "-c", show], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "cmd_backend": "slurm"})
    assert slurm.stdout.strip().split("|")[0] == "utils/slurm.sh --config conf/slurm.conf"
    bad = subprocess.run(["bash", "-c", show], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "cmd_backend": "pbs"})
    assert bad.returncode != 0 and "unknown cmd_backend 'pbs'" in bad.stderr


def test_run_sh_help_lists_stages():
    out = subprocess.run(["./run.sh", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "--stage N --stop-stage N" in out.stdout and "Stages:" in out.stdout


def test_run_sh_refuses_invalid_stage_ranges():
    for args in (["--stage", "5", "--stop-stage", "3"], ["--stage", "x"], ["--stop-stage", "12"]):
        out = subprocess.run(["./run.sh", *args], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 2 and "invalid stage range" in out.stderr, args


def test_run_sh_refuses_unknown_sweeps_and_bad_repeats():
    for args, message in ((["--sweep", "fast"], "--sweep takes default or full"),
                          (["--repeats", "0"], "--repeats takes a positive integer")):
        out = subprocess.run(["./run.sh", *args], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 2 and message in out.stderr, args


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
