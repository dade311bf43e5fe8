"""Fixtures shared by the test modules."""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE_NUM_TEACHERS = 4


@pytest.fixture(scope="session")
def recipe(tmp_path_factory, pytestconfig):
    """One `./run.sh --debug true` of stages 1-9 into a temporary folder (minutes), shared by the slow tests:
    {datadir, dumpdir, expdir, args, log}. Tests that run stages again write into folders of their own."""
    work = tmp_path_factory.mktemp("recipe")
    dirs = {"datadir": work / "data", "dumpdir": work / "dump", "expdir": work / "exp"}
    args = [str(ROOT / "run.sh"), "--debug", "true", "--stage", "1", "--stop-stage", "9",
            "--num_teachers", str(RECIPE_NUM_TEACHERS)]
    for name, path in dirs.items():
        args += [f"--{name}", str(path)]
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # the stages on the terminal as they start: minutes of silence otherwise
        lines.append(line)
        if ") Stage " in line:
            with capture.global_and_fixture_disabled():
                print(f"  [debug recipe] {line.split(') ', 1)[-1].rstrip()}", flush=True)
    returncode = proc.wait(timeout=3000)
    output = "".join(lines)
    (work / "run.log").write_text(output)
    assert returncode == 0, f"run.sh failed; end of its output:\n{output[-5000:]}"
    return {**dirs, "args": args, "log": output}
