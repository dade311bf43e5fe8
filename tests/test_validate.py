import hashlib
import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from espnet_pate.bin.validate_data_dir import main
from espnet_pate.data.kaldi_dir import KaldiDirError, write_kaldi_dir
from espnet_pate.data.transcript_rules import token_list_characters
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


def write_token_list(path: Path, tokens):
    path.write_text("".join(f"{t}\n" for t in ["<blank>", "<unk>", *tokens, "<sos/eos>"]), encoding="utf-8")
    return path


def test_wav_cut_short_with_its_header_intact(data_dir):
    path = wav_of(data_dir, "spkB-1")
    path.write_bytes(path.read_bytes()[:44 + 2 * 6000])  # a copy interrupted after 6000 of 16000 frames
    err = expect_error(data_dir, "wav.scp", 5, "'spkB-1'", "shorter than its header claims", "16000 frames (1.000 s)",
                       "6000 (0.375 s)", str(path))
    assert len(err.problems) == 1


@pytest.mark.parametrize("kept", [0.5, 0.999])
def test_flac_cut_short(data_dir, kept):
    import numpy as np
    import soundfile

    path = data_dir.parent / "wav" / "spkA-0.flac"
    soundfile.write(path, (np.sin(np.arange(16000 * 5) * 0.05) * 8000).astype("int16"), 16000)
    rewrite(data_dir / "wav.scp", str(wav_of(data_dir, "spkA-0")).encode(), str(path).encode())
    assert validate_data_dir(data_dir).seconds == pytest.approx(10.0)
    path.write_bytes(path.read_bytes()[:int(path.stat().st_size * kept)])
    expect_error(data_dir, "wav.scp", 1, "'spkA-0'", "80000 frames", str(path))


def test_utterance_below_the_minimum_length(data_dir):
    write_wav(wav_of(data_dir, "spkA-2"), frames=160)  # 10 ms
    write_wav(wav_of(data_dir, "spkB-0"), frames=1600)  # 0.1 s: allowed ('hello zero' is then 100 characters/s)
    err = expect_error(data_dir, "wav.scp", 3, "'spkA-2'", "utterance of 0.010 s", "minimum of 0.1 s")
    assert [(p.path.name, p.line) for p in err.problems] == [("wav.scp", 3), ("text", 4)]
    assert "10 characters for 0.100 s of audio: more than 40 characters per second" in str(err.problems[1])


def test_transcript_faster_than_anyone_speaks(data_dir):
    rewrite(data_dir / "text", b"spkB-2 hello two", b"spkB-2 hello one hello one hello one hello nine")  # 40 in 1 s
    assert validate_data_dir(data_dir).num_utts == 6
    rewrite(data_dir / "text", b"hello nine", b"hello nines")
    err = expect_error(data_dir, "text", 6, "'spkB-2'", "41 characters for 1.000 s", str(wav_of(data_dir, "spkB-2")))
    assert len(err.problems) == 1


@pytest.mark.parametrize("transcript, shown", [("Hello one", "'H'"), ("hello 1", "'1'"), ("hello, one.", "',' '.'"),
                                               ("hello\tone", "'\\t'"), ("caf\u00e9 one", "'\u00e9'")])
def test_transcript_outside_the_recipes_normalisation(data_dir, transcript, shown):
    rewrite(data_dir / "text", b"spkA-1 hello one", f"spkA-1 {transcript}".encode())
    err = expect_error(data_dir, "text", 2, "'spkA-1'", "cannot encode", "lowercase a-z, apostrophe", shown)
    assert len(err.problems) == 1


def test_apostrophes_pass_and_doubled_spaces_do_not(data_dir):
    rewrite(data_dir / "text", b"spkA-1 hello one", b"spkA-1 it's one")
    assert validate_data_dir(data_dir).num_utts == 6
    rewrite(data_dir / "text", b"spkA-1 it's one", b"spkA-1 it's  one")
    expect_error(data_dir, "text", 2, "'spkA-1'", "more than one space")


def test_transcripts_are_checked_against_the_token_list(data_dir, tmp_path):
    tokens = write_token_list(tmp_path / "tokens.txt", ["<space>", *"helozrntw"])  # the characters of the fixture
    assert validate_data_dir(data_dir, token_list=tokens).num_utts == 6
    rewrite(data_dir / "text", b"spkB-0 hello zero", b"spkB-0 hello four")  # fine under the default rule
    assert validate_data_dir(data_dir).num_utts == 6
    expect_error(data_dir, "text", 4, "'spkB-0'", f"not in the token list {tokens}", "'f' 'u'", token_list=tokens)


def test_token_list_characters_of_char_and_bpe_lists(tmp_path):
    chars = token_list_characters(write_token_list(tmp_path / "char.txt", ["<space>", "a", "'", "b"]))
    assert chars == {" ", "a", "'", "b"}
    bpe = token_list_characters(write_token_list(tmp_path / "bpe.txt", ["\u2581he", "llo", "\u2581", "o"]))
    assert bpe == {" ", "h", "e", "l", "o"}
    with pytest.raises(ValueError, match="no character tokens"):
        token_list_characters(write_token_list(tmp_path / "empty.txt", []))


def test_a_new_users_directory_gets_every_mistake_named_in_one_run(data_dir, tmp_path, capsys):
    tokens = write_token_list(tmp_path / "tokens.txt", ["<space>", *"helozrntw"])
    path = wav_of(data_dir, "spkA-0")
    path.write_bytes(path.read_bytes()[:1000])  # truncated, header intact
    write_wav(wav_of(data_dir, "spkA-1"), frames=160)  # 10 ms
    rewrite(data_dir / "text", b"spkA-2 hello two", b"spkA-2 Hello two")  # uppercase
    rewrite(data_dir / "text", b"spkB-0 hello zero", b"spkB-0 hello four")  # 'f' and 'u' are not in tokens.txt
    rewrite(data_dir / "text", b"spkB-2 hello two\n", b"")  # a missing id
    rewrite(data_dir / "utt2spk", b"spkA-0 spkA\nspkA-1 spkA\n", b"spkA-1 spkA\nspkA-0 spkA\n")  # unsorted
    assert main([str(data_dir), "--token_list", str(tokens)]) == 1
    err = capsys.readouterr().err.splitlines()
    expected = [("wav.scp", 1, "shorter than its header claims"), ("wav.scp", 2, "utterance of 0.010 s"),
                ("wav.scp", 6, "'spkB-2' has no entry in text"), ("text", 3, "'H'"), ("text", 4, "'f' 'u'"),
                ("utt2spk", 2, "not sorted: 'spkA-0' comes after 'spkA-1'")]
    assert len(err) == len(expected) + 1 and err[-1] == f"validate_data_dir: error: 6 problem(s) in {data_dir}"
    for line, (file, number, words) in zip(err, expected):
        assert line.startswith(f"{data_dir / file}:{number}: ") and words in line, (line, file, number, words)


def test_a_clean_directory_passes_with_and_without_the_token_list(data_dir, tmp_path, capsys):
    tokens = write_token_list(tmp_path / "tokens.txt", ["<space>", *"helozrntw"])
    assert main([str(data_dir), "--token_list", str(tokens)]) == 0 and main([str(data_dir)]) == 0
    assert capsys.readouterr().err == ""
    assert main([str(data_dir), "--token_list", str(tmp_path / "none.txt")]) == 1
    assert "token list not found" in capsys.readouterr().err


SETS = ("public_labeled", "sensitive", "public_unlabeled", "public_unlabeled_diff", "dev", "test")


def test_stage2_lists_the_problems_of_every_directory_and_checks_the_token_list(tmp_path):
    for n, name in enumerate(SETS):
        wav_dir = tmp_path / "wav" / name
        wav_dir.mkdir(parents=True)
        utts = {f"s{n}-{i}": f"hello {NUMBERS[i]}" for i in range(2)}
        for utt in utts:
            write_wav(wav_dir / f"{utt}.wav")
        write_kaldi_dir(tmp_path / "data" / name, {u: str(wav_dir / f"{u}.wav") for u in utts},
                        {u: f"s{n}" for u in utts}, utts)
    write_wav(tmp_path / "wav" / "sensitive" / "s1-0.wav", frames=160)
    rewrite(tmp_path / "data" / "dev" / "text", b"hello one", b"hello one!")
    (tmp_path / "dump" / "token_list" / "char").mkdir(parents=True)
    write_token_list(tmp_path / "dump" / "token_list" / "char" / "tokens.txt", ["<space>", *"helozrw"])  # no 'n'
    out = subprocess.run(["./run.sh", "--stage", "2", "--stop-stage", "2", "--datadir", str(tmp_path / "data"),
                          "--dumpdir", str(tmp_path / "dump"), "--expdir", str(tmp_path / "exp")],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 1
    log = out.stdout + out.stderr
    assert f"{tmp_path}/data/sensitive/wav.scp:1: 's1-0': utterance of 0.010 s" in log
    assert f"{tmp_path}/data/dev/text:2: 's4-1': characters the tokenizer cannot encode (not in the token list" in log
    assert "'!' 'n'" in log and f"{tmp_path}/data/test/text:2: 's5-1'" in log  # every 'one' lacks 'n'
    assert "invalid data directories: " + " ".join(f"{tmp_path}/data/{s}" for s in SETS) in log
    assert not (tmp_path / "exp").exists()  # nothing after validation ran


TEMPLATE = REPO / "egs2" / "TEMPLATE" / "pate1"


def test_template_data_sh_stops_with_a_clear_message_until_written(tmp_path):
    out = subprocess.run([str(TEMPLATE / "run.sh"), "--stage", "1", "--stop-stage", "1", "--datadir",
                          str(tmp_path / "data")], capture_output=True, text=True)
    assert out.returncode == 1
    assert "local/data.sh: not written yet: this is the TEMPLATE's stub" in out.stderr
    assert f"under {tmp_path / 'data'}/:" in out.stderr
    assert "dev test public_labeled sensitive public_unlabeled public_unlabeled_diff" in out.stderr
    assert not (tmp_path / "data").exists()
    usage = subprocess.run([str(TEMPLATE / "local" / "data.sh"), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and all(s in usage.stdout for s in SETS) and "lowercase a-z" in usage.stdout


def test_template_conf_holds_every_config_run_sh_reads():
    import re

    run_sh = (REPO / "run.sh").read_text()
    names = set()
    for stem, sfx in re.findall(r"\$\{conf_dir\}/([a-z_]+(?:\$\{teacher_trainable\})?)(\$\{sfx\})?\.yaml", run_sh):
        for part in ("full", "top", "head"):
            names.update(stem.replace("${teacher_trainable}", part) + s for s in ("", "_debug" if sfx else ""))
    assert {"corpus", "privacy", "pate_debug", "train_teacher_top_debug", "decode_transducer"} <= names
    for name in sorted(names):
        assert (TEMPLATE / "conf" / f"{name}.yaml").resolve().is_file(), name


def test_every_bad_line_is_listed_once_without_knock_on_problems(data_dir):
    rewrite(data_dir / "text", b"spkA-1 hello one", b"spkA-1 h\xe9llo one")
    rewrite(data_dir / "text", b"spkB-0 hello zero\n", b"spkB-0 hello zero\nspkB-0 hello zero\n")
    rewrite(data_dir / "utt2spk", b"spkB-2 spkB", b"spkB-2")
    err = expect_error(data_dir, "text", 2, "UTF-8")
    assert [(p.path.name, p.line) for p in err.problems] == [("text", 2), ("text", 5), ("utt2spk", 6)]
    assert "duplicated id 'spkB-0' (first on line 4)" in str(err.problems[1])
    assert "no value for key 'spkB-2'" in str(err.problems[2])
