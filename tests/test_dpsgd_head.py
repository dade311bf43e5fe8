"""DP-SGD of the head over cached encoder outputs (espnet_pate.dpsgd.head_*, espnet_pate.bin.train_dpsgd_head).

Checks: per-example gradients in a padded vmap batch equal the example-alone gradient and the stock ESPnet model's;
a speaker's clipped gradient in a batch equals its clipped gradient alone; the plan (q, steps, sigma for the target)
is the one ESPnet's DP task computes for the same config and data, and so is the ledger's release id; a run killed
mid-epoch and resumed ends with the uninterrupted seeded run's model and accountant; the output loads strictly in
the stock Speech2Text and keeps encoder and ctc_lin bit for bit the public model's. Toy models: seconds.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("espnet2")

from espnet_pate.asr.train_config import resolve_config  # noqa: E402
from espnet_pate.dpsgd.accounting import compute_epsilon  # noqa: E402
from espnet_pate.dpsgd.head_config import load_head_config, train_data  # noqa: E402
from espnet_pate.dpsgd.head_grads import HeadGradients  # noqa: E402
from espnet_pate.dpsgd.head_trainer import CHECKPOINT, HeadDpRuntime, freeze, train_dpsgd_head  # noqa: E402
from espnet_pate.dpsgd.plan import noise_for_budget, plan_dp  # noqa: E402
from espnet_pate.dpsgd.release import ID_KEYS, data_files, release_id  # noqa: E402
from espnet_pate.ensemble.encoder_cache import encode_kaldi_dir, token_ids_fn  # noqa: E402
from espnet_pate.ensemble.teachers import load_model  # noqa: E402
from espnet_pate.ensemble.toy import write_toy_data, write_toy_setup  # noqa: E402
from espnet_pate.privacy.ledger import PrivacyLedger  # noqa: E402
from espnet_pate.report.privacy_json import write_privacy_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "train_dpsgd_head_debug.yaml"
OVER = {"batch_size": 4, "dp_target_epsilon": 8, "dp_seed": 3, "keep_nbest_models": 2}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("dphead")
    paths = write_toy_setup(root, num_teachers=0)
    write_privacy_info(paths["public"], mechanism="public_only", epsilon=0)
    write_toy_data(root / "train", num_utts=12, seed=5, max_seconds=0.6, num_speakers=3)
    write_toy_data(root / "valid", num_utts=4, seed=99, max_seconds=0.6)
    model, args = load_model(paths["public"])
    utts = encode_kaldi_dir(model, token_ids_fn(args), root / "train")
    return {"root": root, "public": paths["public"], "train": root / "train", "valid": root / "valid",
            "utts": utts}


def run(toy, name, **over):
    cfg = load_head_config(CONF, {**OVER, **over})
    return train_dpsgd_head(toy["public"], toy["train"], toy["valid"], toy["root"] / name, cfg,
                            progress=lambda m: None)


def head_model(toy):
    model, _ = load_model(toy["public"])
    freeze(model, ["encoder", "ctc_lin"])
    return model


def grads_of(engine, utts, **kw):
    g, _ = engine.clipped_grad_sum(utts, **kw)
    return torch.cat([v.flatten() for v in g.values()])


# ------------------------------------------------------------------------------------------- exactness
def test_vmap_example_grads_equal_the_example_alone_and_espnet(toy):
    from espnet_pate.asr.rnnt_loss import RNNTLoss

    model = head_model(toy)
    utts = toy["utts"]
    batch = [utts[0], utts[5], utts[2], utts[7]]  # mixed lengths: each padded to the longest
    vm, _ = HeadGradients(model, "vmap").example_grads(batch)
    alone, _ = HeadGradients(model, "loop").example_grads(batch)
    for n in vm:
        torch.testing.assert_close(vm[n], alone[n], rtol=1e-5, atol=1e-6)
    # the stock model's own loss (its CTC term reads frozen parts only) on one unpadded utterance
    import soundfile
    from espnet_pate.data.kaldi_dir import read_kaldi_dir

    model.criterion_transducer = RNNTLoss(blank_id=0)
    u = batch[1]
    speech = torch.as_tensor(soundfile.read(read_kaldi_dir(toy["train"]).wav_scp[u.utt], dtype="float32")[0])[None]
    loss = model(speech, torch.tensor([speech.shape[1]]), u.labels[None], torch.tensor([u.labels.numel()]))[0]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    ref = torch.autograd.grad(loss, [dict(model.named_parameters())[n] for n in names])
    for n, r in zip(names, ref):
        torch.testing.assert_close(vm[n][1], r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_a_speakers_clipped_gradient_depends_on_that_speaker_only(toy, method):
    engine = HeadGradients(head_model(toy), method)
    utts = toy["utts"]
    spk = [u.utt.split("-")[0] for u in utts]
    together = grads_of(engine, utts, clip_norm=0.5, group_ids=spk, max_rows=5)
    loop = HeadGradients(engine.model, "loop")
    alone = sum(grads_of(loop, [u for u, s in zip(utts, spk) if s == one], clip_norm=0.5,
                         group_ids=[one] * spk.count(one)) for one in sorted(set(spk)))
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    # and clipping bites: the utterance-unit sum differs from the speaker-unit one
    assert not torch.allclose(grads_of(engine, utts, clip_norm=0.5), together, rtol=1e-3)


# -------------------------------------------------------------------------------- plan and the ledger
def espnet_dp_args(toy, tmp_path, out, *extra):
    """The Namespace ESPnet's DP task parses for the same config and data (local/train_asr.sh's options)."""
    from espnet_pate.dpsgd.task import DPSGDASRTransducerTask

    resolved = tmp_path / "train_config.yaml"
    resolved.write_text(yaml.safe_dump({**resolve_config(CONF), **OVER}))
    files = [f"--train_data_path_and_name_and_type={','.join(e)}" for e in train_data(toy["train"])]
    return DPSGDASRTransducerTask.get_parser().parse_args(
        ["--config", str(resolved), "--output_dir", str(out), *files, *extra])


@pytest.mark.parametrize("unit", ["utterance", "speaker"])
def test_plan_is_the_espnet_dp_trainers(toy, tmp_path, unit):
    out = run(toy, f"plan_{unit}", dp_unit=unit, max_epoch=1)
    rep = json.loads((out / "dp_report.json").read_text())
    ref = plan_dp(espnet_dp_args(toy, tmp_path, out, "--dp_unit", unit, "--max_epoch", "1"))
    assert {k: rep[k] for k in ID_KEYS} == {k: ref[k] for k in ID_KEYS}
    q, steps = rep["sample_rate"], rep["planned_steps"]
    assert (q, steps, rep["num_units"]) == ((4 / 12, 3, 12) if unit == "utterance" else (4 / 12, 3, 3))
    assert rep["noise_multiplier"] == noise_for_budget(q, steps, 1e-5, "rdp", target_epsilon=8)[0]
    assert rep["steps"] == steps and rep["epsilon"] == pytest.approx(
        compute_epsilon(q, rep["noise_multiplier"], steps, 1e-5, "rdp")) and rep["epsilon"] <= 8


def test_ledger_record_is_the_one_the_espnet_trainer_makes(toy, tmp_path):
    ledger = tmp_path / "privacy_ledger.jsonl"
    PrivacyLedger(str(ledger), eps_budget=64.0, delta=1e-5)
    out = run(toy, "ledgered", dp_ledger=str(ledger))
    (rel,) = PrivacyLedger(str(ledger)).releases
    plan = plan_dp(espnet_dp_args(toy, tmp_path, out, "--dp_ledger", str(ledger)))
    rid, params, _ = release_id(plan, data_files(train_data(toy["train"]), plan), out)
    assert rel.release_id == rid and rel.params == params and rel.queries == 12
    cli = subprocess.run([sys.executable, "-m", "espnet_pate.bin.privacy_ledger", "record-dpsgd", "--ledger",
                          str(ledger), str(out)], cwd=ROOT, capture_output=True, text=True)
    assert cli.returncode == 0 and "already recorded" in cli.stdout, cli.stderr
    assert json.loads((out / "privacy.json").read_text())["ledger"] == str(ledger)


# ------------------------------------------------------------------------------------- resume, output
def test_killed_run_resumes_to_the_uninterrupted_model(toy, monkeypatch):
    straight = run(toy, "straight")
    real, calls = HeadDpRuntime.step, {"n": 0}

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 8:  # epoch 3's 2nd step: epochs 1-2 are in the checkpoint
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(HeadDpRuntime, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        run(toy, "killed")
    monkeypatch.setattr(HeadDpRuntime, "step", real)
    assert torch.load(toy["root"] / "killed" / CHECKPOINT, weights_only=False)["epoch"] == 2
    killed = run(toy, "killed")
    for f in ("valid.loss.ave.pth", "valid.loss.best.pth"):
        a, b = torch.load(straight / f), torch.load(killed / f)
        assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((d / "dp_report.json").read_text()) for d in (straight, killed))
    assert ra["segments"] == rb["segments"] and ra["epsilon"] == rb["epsilon"] and rb["steps"] == 12
    assert (straight / "valid_loss.txt").read_text() == (killed / "valid_loss.txt").read_text()
    assert not (killed / CHECKPOINT).exists() and (killed / ".done").exists()


def test_output_loads_in_stock_speech2text_with_the_public_encoder(toy):
    import soundfile
    from espnet2.bin.asr_transducer_inference import Speech2Text
    from espnet2.tasks.asr_transducer import ASRTransducerTask

    out = run(toy, "decoded")
    model, _ = ASRTransducerTask.build_model_from_file(out / "config.yaml", None, "cpu")
    state = torch.load(out / "valid.loss.ave.pth")
    model.load_state_dict(state, strict=True)
    public = torch.load(toy["public"] / "valid.loss.ave.pth")
    for k in public:
        same = torch.equal(state[k], public[k])
        assert same == (not k.startswith(("decoder.", "joint_network."))) or "num_batches" in k, k
    s2t = Speech2Text(asr_train_config=str(out / "config.yaml"), asr_model_file=str(out / "valid.loss.ave.pth"),
                      beam_size=2)
    wav = sorted((toy["valid"] / "wav").glob("*.wav"))[0]
    nbest = s2t(soundfile.read(wav, dtype="float32")[0])
    assert isinstance(s2t.hypotheses_to_results(nbest)[0][0] if nbest else "", str)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["dp_report"]["epsilon"] == json.loads((out / "privacy.json").read_text())["epsilon"]
    assert np.isfinite([float(x.split()[-1]) for x in (out / "valid_loss.txt").read_text().splitlines()]).all()


def test_cli_refuses_what_the_espnet_dp_trainer_refuses(toy, tmp_path, capsys):
    from espnet_pate.bin.train_dpsgd_head import main

    ledger = tmp_path / "small.jsonl"
    PrivacyLedger(str(ledger), eps_budget=2.0, delta=1e-5)
    base = ["--train", str(toy["train"]), "--valid", str(toy["valid"]), "--config", str(CONF),
            "--dp_target_epsilon", "8"]
    assert main(["--public", str(toy["public"]), "--out", str(tmp_path / "over"), "--dp_ledger", str(ledger),
                 *base]) == 1
    assert "Nothing was trained" in capsys.readouterr().err and not (tmp_path / "over").exists()
    seen = tmp_path / "seen"  # a start model that saw sensitive data
    seen.mkdir()
    for f in ("config.yaml", "valid.loss.ave.pth"):
        (seen / f).write_bytes((toy["public"] / f).read_bytes())
    write_privacy_info(seen, mechanism="dpsgd", epsilon=1)
    assert main(["--public", str(seen), "--out", str(tmp_path / "x"), *base]) == 1
    assert "public data only" in capsys.readouterr().err
    assert PrivacyLedger(str(ledger)).releases == []
