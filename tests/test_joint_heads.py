"""Teacher heads trained together (espnet_pate.ensemble.joint_heads*): ESPnet's loss and optimiser, independence of
teachers, resume, and outputs that ESPnet's Speech2Text and TeacherEnsemble load. Toy models: seconds."""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from espnet_pate.asr.train_config import resolve_config
from espnet_pate.ensemble.encoder_cache import encode_kaldi_dir, token_ids_fn
from espnet_pate.ensemble.joint_heads import StackedAdam, StackedHeads, clip_per_teacher, make_batch, warmup_lr
from espnet_pate.ensemble.joint_heads_train import CHECKPOINT, load_train_config, train_teacher_heads
from espnet_pate.ensemble.teachers import MODEL_FILE, TeacherEnsemble, load_model
from espnet_pate.ensemble.toy import write_toy_data, write_toy_setup

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    paths = write_toy_setup(root, num_teachers=1)
    shards = [root / "shards" / f"shard_{k}" for k in range(3)]
    for k, d in enumerate(shards):
        write_toy_data(d, num_utts=5, seed=10 + k, max_seconds=0.6)
    other = root / "other_shard_1"
    write_toy_data(other, num_utts=6, seed=77, max_seconds=0.6)
    write_toy_data(root / "valid", num_utts=4, seed=99, max_seconds=0.6)
    return {"root": root, "public": paths["public"], "shards": shards, "other": other, "valid": root / "valid"}


def config(**over):
    cfg = load_train_config(CONF / "train_teacher_heads_debug.yaml")
    cfg.update({"max_epoch": 3, "batch_size": 2, "grad_clip": 0.5, **over})
    return cfg


def espnet_model(public):
    """The public model with the loss PateASRTransducerTask installs (the stock loader leaves warp-transducer's)."""
    from espnet_pate.asr.rnnt_loss import RNNTLoss

    model, args = load_model(public)
    model.criterion_transducer = RNNTLoss(blank_id=0)
    return model, args


def head_state(path):
    return {k: v for k, v in torch.load(path).items() if k.startswith(("decoder.", "joint_network."))}


def train(toy, out, shards, **over):
    return train_teacher_heads(toy["public"], shards, toy["valid"], toy["root"] / out, config(**over),
                               progress=lambda m: None)


def test_loss_is_espnet_models_loss(toy):
    model, args = espnet_model(toy["public"])
    utts = encode_kaldi_dir(model, token_ids_fn(args), toy["shards"][0])
    heads = StackedHeads(model.state_dict(), 2, model.decoder, model.joint_network)
    import soundfile
    from espnet_pate.data.kaldi_dir import read_kaldi_dir

    wav = read_kaldi_dir(toy["shards"][0]).wav_scp
    for utt in utts[:2]:
        speech = torch.as_tensor(soundfile.read(wav[utt.utt], dtype="float32")[0])[None]
        with torch.no_grad():
            ref = model(speech, torch.tensor([speech.shape[1]]), utt.labels[None],
                        torch.tensor([utt.labels.numel()]))[0]
            ours = heads.losses(make_batch([[utt], [utts[-1], utt]]))  # padding and a second teacher around it
        assert float(ours[0]) == pytest.approx(float(ref), rel=1e-5)


def test_training_matches_espnet_trainer_step_by_step(toy):
    """Teacher 0 of K = 2 against ESPnet's model with torch's Adam, clip_grad_norm_ and ESPnet's WarmupLR."""
    from espnet2.schedulers.warmup_lr import WarmupLR

    model, args = espnet_model(toy["public"])
    utts = encode_kaldi_dir(model, token_ids_fn(args), toy["shards"][0])
    heads = StackedHeads(model.state_dict(), 2, model.decoder, model.joint_network)
    opt = StackedAdam(heads.params, 2)
    ref_params = [p for n, p in model.named_parameters() if n.startswith(("decoder.", "joint_network."))]
    ref_opt = torch.optim.Adam(ref_params, lr=0.01)
    sched = WarmupLR(ref_opt, warmup_steps=3)
    for step, utt in enumerate(utts[:4]):
        model.zero_grad()
        dec = model.decoder(torch.cat([torch.zeros(1, dtype=torch.long), utt.labels])[None])
        logits = model.joint_network(utt.enc[None].unsqueeze(2), dec.unsqueeze(1))
        loss = model.criterion_transducer(logits, utt.labels[None].int(), torch.tensor([utt.enc.shape[0]]).int(),
                                          torch.tensor([utt.labels.numel()]).int())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref_params, max_norm=0.5)
        ref_opt.step()
        sched.step()

        for p in heads.params.values():
            p.grad = None
        heads.losses(make_batch([[utt], [utts[4 - step]]])).sum().backward()
        heads.zero_padding_grad()
        clip_per_teacher(heads.params, 0.5)
        opt.step(torch.tensor([True, step % 2 == 0]), warmup_lr(0.01, 3, opt.steps + 1))
    assert opt.steps.tolist() == [4, 2]
    for name, p in model.named_parameters():
        if name in heads.params:
            torch.testing.assert_close(heads.params[name][0], p.detach(), rtol=1e-4, atol=1e-6)


def test_clipping_is_per_teacher():
    params = {"w": torch.zeros(3, 4, requires_grad=True)}
    params["w"].grad = torch.tensor([[3.0, 4, 0, 0], [0.3, 0.4, 0, 0], [float("nan"), 0, 0, 0]])
    norms = clip_per_teacher(params, 1.0)
    assert norms[:2].tolist() == pytest.approx([5.0, 0.5])
    assert not torch.isfinite(norms[2])
    torch.testing.assert_close(params["w"].grad[:2], torch.tensor([[0.6, 0.8, 0, 0], [0.3, 0.4, 0, 0]]), atol=1e-6,
                               rtol=0)


def test_teacher_depends_on_its_own_shard_only(toy):
    base = train(toy, "out_base", toy["shards"])
    changed = train(toy, "out_changed", [toy["shards"][0], toy["other"], toy["shards"][2]])
    alone = train(toy, "out_alone", toy["shards"][:1])
    for k in (0, 2):  # bitwise: nothing of shard 1 reaches teachers 0 and 2
        a, b = head_state(base[k] / MODEL_FILE), head_state(changed[k] / MODEL_FILE)
        assert all(torch.equal(a[n], b[n]) for n in a)
    a, b = head_state(base[1] / MODEL_FILE), head_state(changed[1] / MODEL_FILE)
    assert not all(torch.equal(a[n], b[n]) for n in a)
    a, b = head_state(base[0] / MODEL_FILE), head_state(alone[0] / MODEL_FILE)
    assert all(torch.equal(a[n], b[n]) for n in a)  # same seed and batch order: the same teacher, bitwise
    public = head_state(toy["public"] / MODEL_FILE)
    assert not torch.equal(a["joint_network.lin_out.weight"], public["joint_network.lin_out.weight"])


def test_outputs_load_in_speech2text_and_ensemble(toy):
    from espnet2.bin.asr_transducer_inference import Speech2Text
    import soundfile
    from espnet_pate.data.kaldi_dir import read_kaldi_dir

    dirs = train(toy, "out_load", toy["shards"][:2], max_epoch=2)
    for d in dirs:
        assert (d / ".done").is_file() and (d / "valid.loss.best.pth").is_file()
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        assert cfg["train_data_path_and_name_and_type"][0][0].startswith(str(toy["shards"][dirs.index(d)]))
    kdir = read_kaldi_dir(toy["valid"])
    wave = soundfile.read(kdir.wav_scp[kdir.utt_ids[0]], dtype="float32")[0]
    s2t = Speech2Text(asr_train_config=str(dirs[0] / "config.yaml"), asr_model_file=str(dirs[0] / MODEL_FILE),
                      beam_size=1)
    assert isinstance(s2t.hypotheses_to_results(s2t(wave))[0][0], str)
    ens = TeacherEnsemble.from_dirs(dirs)
    assert ens.num_teachers == 2 and not ens.teacher_stages  # the encoder is the public one, shared
    model, _ = load_model(dirs[1])
    torch.testing.assert_close(ens.joint.w_out[1], model.joint_network.lin_out.weight.T)


def test_killed_run_resumes_to_the_same_teachers(toy):
    full = train(toy, "out_full", toy["shards"][:2])

    def kill_after_epoch_2(msg):
        if msg.startswith("epoch 2/"):
            raise KeyboardInterrupt

    out = toy["root"] / "out_killed"
    with pytest.raises(KeyboardInterrupt):
        train_teacher_heads(toy["public"], toy["shards"][:2], toy["valid"], out, config(), progress=kill_after_epoch_2)
    assert (out / CHECKPOINT).is_file() and not (out / ".done").exists()
    said = []
    resumed = train_teacher_heads(toy["public"], toy["shards"][:2], toy["valid"], out, config(), progress=said.append)
    assert said[0] == f"resuming {out} after epoch 2" or any(m.startswith("resuming") for m in said)
    for a, b in zip(full, resumed):
        sa, sb = head_state(a / MODEL_FILE), head_state(b / MODEL_FILE)
        assert all(torch.equal(sa[n], sb[n]) for n in sa)
    said.clear()
    train_teacher_heads(toy["public"], toy["shards"][:2], toy["valid"], out, config(), progress=said.append)
    assert said == [f"skip {out} (done)"]


def test_heads_config_trains_like_the_espnet_teacher_config():
    for sfx in ("", "_debug"):
        heads = load_train_config(CONF / f"train_teacher_heads{sfx}.yaml")
        espnet = resolve_config(CONF / f"train_teacher_head{sfx}.yaml")
        for key in ("batch_size", "max_epoch", "patience", "optim", "optim_conf", "scheduler", "scheduler_conf",
                    "keep_nbest_models", "seed", "best_model_criterion"):
            assert heads[key] == espnet[key], f"train_teacher_heads{sfx}.yaml: {key}"


def test_cli_names_a_missing_shards_dir(tmp_path, capsys):
    from espnet_pate.bin.train_teacher_heads import main

    rc = main(["--public", str(tmp_path), "--shards", str(tmp_path / "nope"), "--valid", str(tmp_path),
               "--out", str(tmp_path / "out"), "--config", str(CONF / "train_teacher_heads_debug.yaml")])
    assert rc == 1 and str(tmp_path / "nope") in capsys.readouterr().err


def test_bad_config_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: sgd\nscheduler: noamlr\n")
    with pytest.raises(ValueError, match="bad.yaml.*optim 'sgd'.*scheduler 'noamlr'"):
        load_train_config(bad)
    assert np.isfinite(float(warmup_lr(1e-3, 10, torch.tensor([1]))[0]))


def test_teachers_finished_before_the_run_are_kept(toy):
    out = toy["root"] / "out_kept"
    (out / "teacher_1").mkdir(parents=True)
    (out / "teacher_1" / ".done").touch()  # e.g. trained by --teacher_training espnet
    said = []
    train_teacher_heads(toy["public"], toy["shards"][:2], toy["valid"], out, config(max_epoch=1),
                        progress=said.append)
    assert (out / "teacher_0" / MODEL_FILE).is_file() and not (out / "teacher_1" / MODEL_FILE).exists()
    assert f"kept {out / 'teacher_1'} (done before this run)" in said
