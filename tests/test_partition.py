import json
from pathlib import Path

import pytest

from espnet_pate.bin.partition_data_dir import main
from espnet_pate.data.kaldi_dir import read_kaldi_dir, read_table, write_kaldi_dir
from espnet_pate.data.partition import (
    MANIFEST,
    PartitionError,
    assign_units,
    list_shards,
    partition_data_dir,
    shard_dir,
)
from espnet_pate.data.validate import check_tables

SPEAKER_SIZES = {f"spk{s:02d}": s + 1 for s in range(12)}  # 1..12 utterances, 78 in all


def make_source(path: Path, sizes=SPEAKER_SIZES) -> Path:
    # Partitioning reads only the tables, so the audio paths need not exist.
    utt2spk = {f"{spk}-{i:02d}": spk for spk, n in sizes.items() for i in range(n)}
    write_kaldi_dir(path, {u: f"/audio/{u}.wav" for u in utt2spk}, utt2spk, {u: f"WORDS OF {u}" for u in utt2spk})
    return path


@pytest.fixture
def src(tmp_path):
    return make_source(tmp_path / "sensitive")


def shard_tables(out_dir):
    return [read_kaldi_dir(d) for d in list_shards(out_dir)]


def dir_bytes(path: Path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def dir_stamps(path: Path):
    return {p.relative_to(path).as_posix(): p.stat().st_mtime_ns for p in sorted(path.rglob("*")) if p.is_file()}


def test_disjoint_complete_speaker_disjoint(src, tmp_path):
    manifest = partition_data_dir(src, tmp_path / "shards", 4)
    shards = shard_tables(tmp_path / "shards")
    assert [d.path.name for d in shards] == ["shard_0", "shard_1", "shard_2", "shard_3"]
    source = read_kaldi_dir(src)
    seen_utts, seen_spks = set(), set()
    for shard, entry in zip(shards, manifest["shards"]):
        check_tables(shard.path)  # every shard is itself a consistent Kaldi directory
        utts, spks = set(shard.wav_scp), set(shard.utt2spk.values())
        assert not utts & seen_utts and not spks & seen_spks
        seen_utts |= utts
        seen_spks |= spks
        assert all(shard.wav_scp[u] == source.wav_scp[u] and shard.text[u] == source.text[u] for u in utts)
        assert (entry["num_utts"], entry["num_speakers"]) == (len(utts), len(spks))
    assert seen_utts == set(source.wav_scp) and seen_spks == set(SPEAKER_SIZES)
    assert (manifest["num_utts"], manifest["num_speakers"], manifest["num_shards"]) == (78, 12, 4)
    assert (manifest["unit"], manifest["seed"]) == ("speaker", 0)


def test_balanced(src, tmp_path):
    for k in (2, 3, 4, 5, 12):
        manifest = partition_data_dir(src, tmp_path / f"k{k}", k, assignment="greedy")
        sizes = [s["num_utts"] for s in manifest["shards"]]
        # Largest-first greedy: spread within the largest speaker, fullest shard within 4/3 of the optimum.
        largest = max(SPEAKER_SIZES.values())
        assert max(sizes) - min(sizes) <= largest
        assert max(sizes) <= 4 / 3 * max(78 / k, largest)
    equal = make_source(tmp_path / "equal", {f"s{i}": 5 for i in range(9)})
    assert [s["num_utts"] for s in partition_data_dir(equal, tmp_path / "eq", 3, assignment="greedy")["shards"]] == [15, 15, 15]


def test_deterministic_from_seed(tmp_path):
    src = make_source(tmp_path / "src", {f"s{i}": 3 for i in range(10)})
    partition_data_dir(src, tmp_path / "a", 5, seed=7)
    partition_data_dir(src, tmp_path / "b", 5, seed=7)
    partition_data_dir(src, tmp_path / "c", 5, seed=8)
    assert dir_bytes(tmp_path / "a") == dir_bytes(tmp_path / "b")
    speakers = {x: [sorted(set(d.utt2spk.values())) for d in shard_tables(tmp_path / x)] for x in "ac"}
    assert speakers["a"] != speakers["c"]


def test_utterance_unit(src, tmp_path):
    manifest = partition_data_dir(src, tmp_path / "utt", 5, unit="utterance", seed=3, assignment="greedy")
    shards = shard_tables(tmp_path / "utt")
    sizes = [len(d.wav_scp) for d in shards]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 78
    utts = [u for d in shards for u in d.wav_scp]
    assert len(utts) == len(set(utts)) == 78
    speakers_per_shard = [set(d.utt2spk.values()) for d in shards]
    assert any(a & b for i, a in enumerate(speakers_per_shard) for b in speakers_per_shard[i + 1:])
    assert manifest["unit"] == "utterance"
    # 78 utterances allow more shards than the 12 speakers do.
    assert len(partition_data_dir(src, tmp_path / "many", 40, unit="utterance", assignment="greedy")["shards"]) == 40


def test_too_many_shards(src, tmp_path):
    with pytest.raises(PartitionError, match="13 shards requested but there are only 12 speakers"):
        partition_data_dir(src, tmp_path / "out", 13)
    assert not (tmp_path / "out").exists()
    with pytest.raises(PartitionError, match="only 78 utterances"):
        partition_data_dir(src, tmp_path / "out", 79, unit="utterance")


def test_rerun_reuses(src, tmp_path):
    out = tmp_path / "out"
    first = partition_data_dir(src, out, 4, seed=1)
    stamps = dir_stamps(out)
    assert partition_data_dir(src, out, 4, seed=1) == first
    assert dir_stamps(out) == stamps
    assert json.loads((out / MANIFEST).read_text()) == first


@pytest.mark.parametrize("change", [{"seed": 2}, {"num_shards": 3}, {"unit": "utterance"}, {"assignment": "greedy"}])
def test_changed_settings_refused(src, tmp_path, change):
    out = tmp_path / "out"
    partition_data_dir(src, out, 4, seed=1)
    before = dir_bytes(out)
    settings = {"num_shards": 4, "seed": 1, **change}
    with pytest.raises(PartitionError, match=f"{list(change)[0]} .* -> "):
        partition_data_dir(src, out, **settings)
    assert dir_bytes(out) == before
    manifest = partition_data_dir(src, out, **settings, overwrite=True)
    assert all(manifest[key] == value for key, value in change.items())
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST] + [s["name"] for s in manifest["shards"]])


def test_changed_source_refused(src, tmp_path):
    out = tmp_path / "out"
    partition_data_dir(src, out, 4)
    text = read_table(src / "text")
    text["spk03-00"] = "AN EDITED TRANSCRIPT"
    write_kaldi_dir(src, read_table(src / "wav.scp"), read_table(src / "utt2spk"), text)
    with pytest.raises(PartitionError, match="source_sha256"):
        partition_data_dir(src, out, 4)
    assert partition_data_dir(src, out, 4, overwrite=True)["num_utts"] == 78


def test_edited_shard_detected(src, tmp_path):
    out = tmp_path / "out"
    partition_data_dir(src, out, 3)
    (shard_dir(out, 1) / "text").write_text("edited\n")
    with pytest.raises(PartitionError, match="shard_1 is missing or differs"):
        partition_data_dir(src, out, 3)
    partition_data_dir(src, out, 3, overwrite=True)
    assert partition_data_dir(src, out, 3)["num_shards"] == 3


def test_interrupted_run_is_redone(src, tmp_path):
    out = tmp_path / "out"
    partition_data_dir(src, out, 4)
    complete = dir_bytes(out)
    (out / MANIFEST).unlink()
    (shard_dir(out, 2) / "text").unlink()
    partition_data_dir(src, out, 4)
    assert dir_bytes(out) == complete


def test_hash_assignment_moves_only_the_changed_speaker(tmp_path):
    sizes = {f"spk{i:02d}": 1 + i % 4 for i in range(30)}
    before = assign_units(sizes, 5, seed=4, assignment="hash")
    after = assign_units({**sizes, "spk99": 3}, 5, seed=4, assignment="hash")
    assert {u: after[u] for u in before} == before
    src = make_source(tmp_path / "src", sizes)
    manifest = partition_data_dir(src, tmp_path / "out", 5, seed=4, assignment="hash")
    assert manifest["assignment"] == "hash" and sum(s["num_utts"] for s in manifest["shards"]) == sum(sizes.values())
    spks = [set(d.utt2spk.values()) for d in shard_tables(tmp_path / "out")]
    assert sum(len(s) for s in spks) == len(set().union(*spks)) == 30


def test_source_without_text(tmp_path):
    src = make_source(tmp_path / "src")
    (src / "text").unlink()
    partition_data_dir(src, tmp_path / "out", 2)
    assert all(not (d / "text").exists() for d in list_shards(tmp_path / "out"))


def test_cli(src, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(src), str(out), "--num-shards", "3", "--assignment", "greedy"]) == 0
    assert "wrote 3 speaker-disjoint shards of 78 utterances (26-26 per shard" in capsys.readouterr().out
    assert main([str(src), str(out), "--num-shards", "3", "--assignment", "greedy"]) == 0
    assert "reused 3" in capsys.readouterr().out
    assert main([str(src), str(out), "--num-shards", "3", "--seed", "5"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(src), str(out), "--num-shards", "3", "--seed", "5", "--overwrite"]) == 0
    assert "wrote 3" in capsys.readouterr().out
    assert main([str(src), str(tmp_path / "o2"), "--num-shards", "30"]) == 1
    assert "only 12 speakers" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "o3"), "--num-shards", "2"]) == 1
    assert "not a directory" in capsys.readouterr().err
