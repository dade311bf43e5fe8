import hashlib
import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from espnet_pate.bin.validate_data_dir import main
from espnet_pate.data.kaldi_dir import KaldiDirError, write_kaldi_dir
from espnet_pate.data.validate import check_tables, validate_data_dir

REPO = Path(__file__).resolve().parents[1]
NUMBERS = ("zero", "one", "two")


def write_wav(path: Path, sample_rate=16000, channels=1, frames=16000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(b"\x01\x00" * frames * channels)


@pytest.fixture
def data_dir(tmp_path):
    """2 speakers x 3 utterances of 1 s ('hello zero' ... 'hello two'); utterance ids spkA-0 ... spkB-2."""
    wav_dir = tmp_path / "wav"
    wav_dir.mkdir()
    wav_scp, utt2spk, text = {}, {}, {}
    for spk in ("spkA", "spkB"):
        for i in range(3):
            utt = f"{spk}-{i}"
            write_wav(wav_dir / f"{utt}.wav")
            wav_scp[utt] = str(wav_dir / f"{utt}.wav")
            utt2spk[utt] = spk
            text[utt] = f"hello {NUMBERS[i]}"
    write_kaldi_dir(tmp_path / "data", wav_scp, utt2spk, text)
    return tmp_path / "data"


def rewrite(path: Path, old: bytes, new: bytes):
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))


def wav_of(data_dir: Path, utt: str) -> Path:
    return data_dir.parent / "wav" / f"{utt}.wav"


def expect_error(data_dir, file, line, *words, **kwargs):
    with pytest.raises(KaldiDirError) as info:
        validate_data_dir(data_dir, **kwargs)
    err = info.value
    assert err.path == data_dir / file
    assert err.line == line
    assert str(err).startswith(f"{data_dir / file}:{line}: " if line else f"{data_dir / file}: ")
    for word in words:
        assert word in str(err)
    return err


def test_good_dir(data_dir):
    stats = validate_data_dir(data_dir)
    assert (stats.num_utts, stats.num_speakers) == (6, 2)
    assert stats.seconds == pytest.approx(6.0)
    assert stats.hours == pytest.approx(6.0 / 3600)


def test_missing_wav_file(data_dir):
    os.remove(wav_of(data_dir, "spkA-2"))
    expect_error(data_dir, "wav.scp", 3, "'spkA-2'", "not found")


def test_corrupt_audio(data_dir):
    wav_of(data_dir, "spkB-0").write_bytes(b"RIFF\x00\x01this is not audio at all" * 4)
    expect_error(data_dir, "wav.scp", 4, "'spkB-0'", "cannot read audio")


def test_truncated_header(data_dir):
    path = wav_of(data_dir, "spkA-1")
    path.write_bytes(path.read_bytes()[:20])
    expect_error(data_dir, "wav.scp", 2, "'spkA-1'", "cannot read audio")


def test_wrong_sample_rate(data_dir):
    write_wav(wav_of(data_dir, "spkA-1"), sample_rate=8000)
    expect_error(data_dir, "wav.scp", 2, "'spkA-1'", "8000 Hz", "expected 16000")
    expect_error(data_dir, "wav.scp", 1, "'spkA-0'", "16000 Hz, expected 8000", sample_rate=8000)


def test_stereo_and_empty_audio(data_dir):
    write_wav(wav_of(data_dir, "spkA-0"), channels=2)
    write_wav(wav_of(data_dir, "spkB-2"), frames=0)
    err = expect_error(data_dir, "wav.scp", 1, "2 channels, expected mono")
    assert [(p.line, "no samples" in str(p)) for p in err.problems] == [(1, False), (6, True)]


def test_every_audio_problem_is_listed(data_dir):
    for spk in ("spkA", "spkB"):
        for i in range(3):
            os.remove(wav_of(data_dir, f"{spk}-{i}"))
    err = expect_error(data_dir, "wav.scp", 1, "'spkA-0'")
    lines = str(err).splitlines()
    assert len(lines) == len(err.problems) == 6
    assert all(line.startswith(f"{data_dir / 'wav.scp'}:{n}: 'spk") and "audio file not found" in line
               for n, line in enumerate(lines, start=1))


def test_pipe_entry_rejected(data_dir):
    rewrite(data_dir / "wav.scp", str(wav_of(data_dir, "spkA-1")).encode(), b"sox in.flac -t wav - |")
    expect_error(data_dir, "wav.scp", 2, "pipe")


def test_empty_transcript(data_dir):
    rewrite(data_dir / "text", b"spkB-1 hello one", b"spkB-1   ")
    expect_error(data_dir, "text", 5, "empty transcript", "'spkB-1'")


def test_non_utf8_transcript(data_dir):
    rewrite(data_dir / "text", b"spkA-2 hello two", b"spkA-2 h\xe9llo two")
    expect_error(data_dir, "text", 3, "UTF-8")


@pytest.mark.parametrize("file, drop, missing_in", [("text", b"spkA-1 hello one\n", "text"),
                                                    ("utt2spk", b"spkB-2 spkB\n", "utt2spk")])
def test_id_missing_from_a_file(data_dir, file, drop, missing_in):
    rewrite(data_dir / file, drop, b"")
    line = {"text": 2, "utt2spk": 6}[file]
    expect_error(data_dir, "wav.scp", line, "has no entry in " + missing_in)


def test_id_not_in_wav_scp(data_dir):
    rewrite(data_dir / "text", b"spkA-2 hello two\n", b"spkA-2 hello two\nspkA-3 extra\n")
    expect_error(data_dir, "text", 4, "'spkA-3'", "not in wav.scp")


def test_spk2utt_inconsistent(data_dir):
    rewrite(data_dir / "spk2utt", b"spkB-0 ", b"")
    expect_error(data_dir, "utt2spk", 4, "'spkB-0'", "missing from spk2utt")
    rewrite(data_dir / "spk2utt", b"spkA spkA-0", b"spkA spkB-0 spkA-0")
    expect_error(data_dir, "spk2utt", 1, "'spkB-0'", "speaker 'spkA'", "gives speaker 'spkB'")


@pytest.mark.parametrize("file, dup, line", [("wav.scp", b"spkA-0", 2), ("text", b"spkB-0", 5),
                                             ("utt2spk", b"spkA-1", 3)])
def test_duplicated_id(data_dir, file, dup, line):
    lines = (data_dir / file).read_bytes().splitlines(keepends=True)
    original = next(l for l in lines if l.startswith(dup + b" "))
    lines.insert(lines.index(original) + 1, original)
    (data_dir / file).write_bytes(b"".join(lines))
    expect_error(data_dir, file, line, "duplicated id", dup.decode())


def test_unsorted(data_dir):
    lines = (data_dir / "utt2spk").read_bytes().splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]
    (data_dir / "utt2spk").write_bytes(b"".join(lines))
    expect_error(data_dir, "utt2spk", 3, "not sorted", "'spkA-1' comes after 'spkA-2'", "LC_ALL=C sort")


def test_required_files(data_dir):
    (data_dir / "text").unlink()
    expect_error(data_dir, "text", None, "missing", "--no-text")
    assert validate_data_dir(data_dir, require_text=False).num_utts == 6
    (data_dir / "spk2utt").unlink()
    expect_error(data_dir, "spk2utt", None, "missing", require_text=False)


def test_untranscribed_dir_still_checks_a_present_text(data_dir):
    rewrite(data_dir / "text", b"spkB-1 hello one", b"spkB-1")
    expect_error(data_dir, "text", 5, "empty transcript", require_text=False)


def test_check_tables_does_not_open_audio(data_dir):
    for utt in ("spkA-0", "spkB-1"):
        os.remove(wav_of(data_dir, utt))
    assert check_tables(data_dir).utt_ids[0] == "spkA-0"


def tree_hashes(root: Path):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_failing_validation_leaves_everything_intact(data_dir):
    done = data_dir.parent / "dump_done"
    done.mkdir()
    (done / "feats_stats.npz").write_bytes(os.urandom(64))
    (done / ".done").write_text("")
    write_wav(wav_of(data_dir, "spkB-1"), sample_rate=22050)
    before = tree_hashes(data_dir.parent)
    assert main([str(data_dir)]) == 1
    with pytest.raises(KaldiDirError):
        validate_data_dir(data_dir)
    assert tree_hashes(data_dir.parent) == before


def test_cli_in_process(data_dir, capsys):
    assert main([str(data_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"{data_dir}: 6 utterances, 2 speakers, 0.002 hours"
    rewrite(data_dir / "text", b"spkA-2 hello two", b"spkA-2 ")
    assert main([str(data_dir)]) == 1
    assert f"{data_dir / 'text'}:3: 'spkA-2': empty transcript" in capsys.readouterr().err
    (data_dir / "text").unlink()
    assert main([str(data_dir), "--no-text"]) == 0
    assert main([str(data_dir), "--no-text", "--sample-rate", "8000"]) == 1
    assert f"{data_dir / 'wav.scp'}:1: " in capsys.readouterr().err


def test_cli_subprocess(data_dir):
    def run(*args):
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        return subprocess.run([sys.executable, "-m", "espnet_pate.bin.validate_data_dir", *args],
                              capture_output=True, text=True, env=env)

    good = run(str(data_dir), "--sample-rate", "16000")
    assert good.returncode == 0, good.stderr
    assert "6 utterances, 2 speakers" in good.stdout
    os.remove(wav_of(data_dir, "spkB-0"))
    bad = run(str(data_dir))
    assert bad.returncode != 0
    assert f"{data_dir / 'wav.scp'}:4: 'spkB-0': audio file not found" in bad.stderr
    assert bad.stdout == ""
