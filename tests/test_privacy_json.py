"""privacy.json: written and read in one module; a student inherits its labels' claim without a shell copy."""
import json
import subprocess
import sys

import pytest

from espnet_pate.report.privacy_json import (
    inherit_privacy_info,
    is_public_model,
    read_privacy_info,
    write_privacy_info,
)


def test_round_trip_and_missing(tmp_path):
    write_privacy_info(tmp_path / "sys", epsilon=8.0, delta=1e-5, mechanism="dpsgd",
                       segments=[{"sample_rate": 0.1, "noise_multiplier": 1.0, "steps": 3}])
    info = read_privacy_info(tmp_path / "sys")
    assert info["epsilon"] == 8.0 and info["segments"][0]["steps"] == 3
    assert not list((tmp_path / "sys").glob("*.tmp"))
    assert read_privacy_info(tmp_path / "nothing") == {}


def test_bad_file_is_a_clear_error(tmp_path):
    (tmp_path / "privacy.json").write_text("{epsilon: 8")
    with pytest.raises(ValueError, match=f"{tmp_path / 'privacy.json'}: not valid JSON"):
        read_privacy_info(tmp_path)
    (tmp_path / "privacy.json").write_text("[8]")
    with pytest.raises(ValueError, match="JSON object"):
        read_privacy_info(tmp_path)


def test_inherit_copies_the_claim_and_names_its_source(tmp_path):
    write_privacy_info(tmp_path / "labels", epsilon=4.0, delta=1e-5, mechanism="PATE gnmax", unit="speaker")
    inherit_privacy_info(tmp_path / "labels", tmp_path / "student")
    got = read_privacy_info(tmp_path / "student")
    assert got.pop("inherited_from") == str(tmp_path / "labels")
    assert got == read_privacy_info(tmp_path / "labels")
    with pytest.raises(FileNotFoundError, match="no privacy claim"):
        inherit_privacy_info(tmp_path / "none", tmp_path / "student2")


def test_only_public_models_are_public(tmp_path):
    for name, mech in (("pub", "public_only"), ("teacher", "teacher"), ("dp", "dpsgd"), ("np", "none")):
        write_privacy_info(tmp_path / name, mechanism=mech)
    assert is_public_model(tmp_path / "pub")
    assert not any(is_public_model(tmp_path / n) for n in ("teacher", "dp", "np", "missing"))


def test_cli_writes_and_inherits(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "espnet_pate.bin.privacy_info", *map(str, a)],  # noqa
                                    capture_output=True, text=True)
    assert run(tmp_path / "pub", "--epsilon", "0", "--delta", "0", "--mechanism", "public_only").returncode == 0
    assert json.loads((tmp_path / "pub" / "privacy.json").read_text())["mechanism"] == "public_only"
    assert run(tmp_path / "student", "--inherit", tmp_path / "pub").returncode == 0
    assert read_privacy_info(tmp_path / "student")["inherited_from"] == str(tmp_path / "pub")
    bad = run(tmp_path / "x", "--inherit", tmp_path / "pub", "--epsilon", "3")
    assert bad.returncode == 2 and "--inherit takes the whole claim" in bad.stderr
    assert run(tmp_path / "x").returncode == 2
