"""cmd_backend=slurm (utils/slurm.sh) on a real single-node Slurm cluster started for these tests.

Installs slurm-wlm and munge when they are missing (apt-get, as root: CI runs as root), starts munged, slurmctld -D
and slurmd -D with a private slurm.conf (its own ports, munge socket, state and logs in a temporary folder), runs job
arrays and stage 6 of the debug recipe through utils/slurm.sh, and stops the daemons by their PIDs.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["slurm-wlm", "munge"]
TOOLS = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo"]

pytestmark = pytest.mark.slow  # a cluster start and real jobs; stage 6 needs the debug recipe's public model


def which(tool: str):
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def ensure_slurm_installed():
    """The Debian packages, installed when missing; a clear failure (never a skip) when that is impossible."""
    if all(which(t) for t in TOOLS):
        return
    if os.geteuid() != 0:
        pytest.fail(f"Slurm is not installed ({', '.join(t for t in TOOLS if not which(t))} missing) and installing "
                    f"it needs root: apt-get install -y --no-install-recommends {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    out = subprocess.run(install, capture_output=True, text=True, env=env)
    if out.returncode != 0:  # a stale package index: update once and retry
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, env=env)
        out = subprocess.run(install, capture_output=True, text=True, env=env)
    missing = [t for t in TOOLS if not which(t)]
    if out.returncode != 0 or missing:
        pytest.fail(f"could not install {' '.join(PACKAGES)} (missing: {missing}):\n{(out.stdout + out.stderr)[-3000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else f"({path} missing)"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A private Slurm cluster: the environment for its client commands (SLURM_CONF) and its folder."""
    ensure_slurm_installed()
    work = tmp_path_factory.mktemp("slurm")
    munge = work / "munge"
    munge.mkdir(mode=0o755)
    os.chmod(munge, 0o755)
    for d in ("state", "spool", "log"):
        (work / d).mkdir()
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    node = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    host = re.match(r"NodeName=(\S+)", node).group(1)
    conf = work / "slurm.conf"
    conf.write_text(f"""ClusterName=pate_test
SlurmctldHost={host}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={munge}/munge.socket
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MailProg=/bin/true
ReturnToService=2
StateSaveLocation={work}/state
SlurmdSpoolDir={work}/spool
SlurmctldPidFile={work}/slurmctld.pid
SlurmdPidFile={work}/slurmd.pid
SlurmctldLogFile={work}/log/slurmctld.log
SlurmdLogFile={work}/log/slurmd.log
JobCompType=jobcomp/filetxt
JobCompLoc={work}/log/jobcomp.txt
{node} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = []

    def start(*cmd):
        log = open(work / "log" / f"{Path(cmd[0]).name}.out", "w")
        daemons.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()

    try:
        start(which("munged"), "-F", "--force", f"--socket={munge}/munge.socket", f"--key-file={key}",
              f"--pid-file={munge}/munged.pid", f"--log-file={work}/log/munged.log", f"--seed-file={munge}/munged.seed")
        for _ in range(100):
            if (munge / "munge.socket").exists():
                break
            time.sleep(0.1)
        start(which("slurmctld"), "-D")
        start(which("slurmd"), "-D")
        state = ""
        for _ in range(60):
            if any(d.poll() is not None for d in daemons):
                break
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        if state != "idle":
            logs = "\n".join(f"--- {p.name}\n{tail(p)}" for p in sorted((work / "log").iterdir()))
            pytest.fail(f"the test cluster did not come up (node state '{state}'):\n{logs}")
        yield {"env": env, "work": work}
    finally:
        for daemon in reversed(daemons):  # slurmd, slurmctld, munged
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def slurm_sh(cluster, *args, **kwargs):
    return subprocess.run(["utils/slurm.sh", "--config", "conf/slurm.conf", *args], cwd=ROOT, env=cluster["env"],
                          capture_output=True, text=True, timeout=300, **kwargs)


def job_id_in(log: Path) -> str:
    match = re.search(r"^# Running on \S+ as Slurm job (\S+)$", log.read_text(), re.M)
    assert match, f"{log} does not say which Slurm job ran it:\n{log.read_text()}"
    return match.group(1)


def test_job_range_runs_as_one_job_array_with_a_log_per_task(cluster, tmp_path):
    out = slurm_sh(cluster, "--max-jobs-run", "2", "--mem", "100M", "JOB=1:3", str(tmp_path / "log/work.JOB.log"),
                   "bash", "-c", "echo task=$SLURM_ARRAY_TASK_ID job=JOB")
    assert out.returncode == 0, out.stderr
    ids = []
    for k in (1, 2, 3):
        log = tmp_path / f"log/work.{k}.log"
        text = log.read_text()
        assert text.startswith(f"# bash -c echo task=$SLURM_ARRAY_TASK_ID job={k}\n# Started at "), text
        assert f"\ntask={k} job={k}\n" in text and re.search(r"^# Ended \(code 0\)", text, re.M), text
        ids.append(job_id_in(log))
    array = ids[0].split("_")[0]
    assert ids == [f"{array}_{k}" for k in (1, 2, 3)]
    # conf/slurm.conf turned --mem into --mem-per-cpu and --max-jobs-run into the array's throttle
    job = subprocess.run(["scontrol", "show", "job", array], env=cluster["env"], capture_output=True, text=True).stdout
    assert job.count("MinMemoryCPU=100M") == 3 and re.search(r"ArrayTaskId=1\b", job), job
    script = (tmp_path / "log/q/work.JOB.sh").read_text()
    assert "--mem-per-cpu 100M" in script and "--job-name work.JOB" in script


def test_failing_job_fails_the_runner_naming_its_log(cluster, tmp_path):
    out = slurm_sh(cluster, "JOB=1:3", str(tmp_path / "bad.JOB.log"), "bash", "-c", "exit $((JOB == 2 ? 3 : 0))")
    assert out.returncode == 1
    assert re.search(r"job \d+_2 failed \(code 3\), see \S*bad\.2\.log", out.stderr), out.stderr
    assert "bad.1.log" not in out.stderr and "bad.3.log" not in out.stderr
    assert "1 of 3 jobs failed" in out.stderr


def test_interrupted_runner_cancels_its_job(cluster, tmp_path):
    proc = subprocess.Popen(["utils/slurm.sh", "JOB=1:2", str(tmp_path / "long.JOB.log"), "sleep", "300"], cwd=ROOT,
                            env=cluster["env"], stderr=subprocess.PIPE, text=True)
    log = tmp_path / "long.1.log"
    for _ in range(120):
        if log.exists() and "Running on" in log.read_text():
            break
        time.sleep(0.5)
    array = job_id_in(log).split("_")[0]
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode != 0 and f"cancelled Slurm job {array}" in stderr, stderr
    for _ in range(60):
        states = subprocess.run(["squeue", "-h", "-j", array, "-t", "all", "-o", "%T"], env=cluster["env"],
                                capture_output=True, text=True).stdout.split()
        if states and set(states) == {"CANCELLED"}:
            break
        time.sleep(0.5)
    assert set(states) == {"CANCELLED"}, states


def test_job_that_slurm_kills_is_reported_as_failed(cluster, tmp_path):
    proc = subprocess.Popen(["utils/slurm.sh", "JOB=1:2", str(tmp_path / "k.JOB.log"), "bash", "-c",
                             "[ JOB = 2 ] || sleep 300"], cwd=ROOT, env=cluster["env"], stderr=subprocess.PIPE, text=True)
    log = tmp_path / "k.1.log"
    for _ in range(120):
        if log.exists() and "Running on" in log.read_text():
            break
        time.sleep(0.5)
    task = job_id_in(log)
    subprocess.run(["scancel", task], env=cluster["env"], check=True)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 1
    assert f"job {task} ended without an exit code (killed by Slurm?), see {log}" in stderr, stderr
    assert "k.2.log" not in stderr and "1 of 2 jobs failed" in stderr


def test_unknown_resource_option_is_refused_before_submitting(cluster, tmp_path):
    out = slurm_sh(cluster, "--gpus_per_node", "2", str(tmp_path / "x.log"), "true")
    assert out.returncode == 1 and "--gpus_per_node 2: conf/slurm.conf has no 'option gpus_per_node=...'" in out.stderr
    assert not (tmp_path / "x.log").exists()


def test_recipe_stage_trains_its_baselines_as_a_slurm_job_array(cluster, recipe, tmp_path):
    """Stage 6 of the debug recipe (non-private and DP-SGD fine-tunes) with cmd_backend=slurm, from the debug run's
    public model, into an experiment folder of its own."""
    exp = tmp_path / "exp"
    exp.mkdir()
    for needed in ("public_only", "asr_stats_public"):  # read only
        (exp / needed).symlink_to(recipe["expdir"] / needed)
    args = ["./run.sh", "--debug", "true", "--stage", "6", "--stop-stage", "6", "--datadir", str(recipe["datadir"]),
            "--dumpdir", str(recipe["dumpdir"]), "--expdir", str(exp)]
    env = {**cluster["env"], "cmd_backend": "slurm"}
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]
    assert "utils/slurm.sh" not in out.stderr
    names = (exp / "log/baseline_list").read_text().split()
    assert sorted(names) == ["dpsgd_eps8", "dpsgd_head_eps8", "nonprivate"]
    ids = [job_id_in(exp / f"log/train_baseline.{k}.log") for k in (1, 2, 3)]
    array = ids[0].split("_")[0]
    assert ids == [f"{array}_1", f"{array}_2", f"{array}_3"]
    for name in names:
        assert (exp / name / ".done").exists()
        # each model's own log starts with its command (the privacy card quotes it) and ends with its exit code
        train_log = (exp / name / "train.log").read_text()
        assert train_log.startswith(f"# local/train_baseline.sh --name {name} "), train_log[:300]
        assert "# Ended (code 0)" in train_log
    assert (exp / "dpsgd_eps8" / "privacy.json").exists()
    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "training in parallel" not in again.stdout, again.stdout[-3000:]
    assert f"skip (done: {exp}/nonprivate/.done)" in again.stdout
