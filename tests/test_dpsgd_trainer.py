"""The DP-SGD trainer plugin (espnet_pate.dpsgd.{trainer,task,sampler}, espnet_pate.bin.asr_transducer_dp_train).

Done-when checks: YAML DP options are accepted; the optimizer sees exactly the noisy averaged gradient (ESPnet's
grad_clip has no effect); speaker-level DP clips each speaker's summed gradient; a run killed mid-epoch and
resumed with ESPnet's --resume reports the same final epsilon (and accountant steps) as an uninterrupted run;
privacy.json with epsilon <= target, every noise segment and whether the target was met; config.yaml carries the
DP settings and the final epsilon; checkpoints load strictly into, and decode with, the stock Speech2Text. With a
privacy ledger: a run that cannot fit is refused before training, a finished model is recorded once with the RDP
curve of its segments on the ledger's grid and its model file's SHA-256. --use_wandb and an --init_param that has
seen sensitive data are refused.

Tiny everything (a 1-block model of width 32, 12 training utterances of 0.25-0.55 s synthesized with numpy,
2 epochs of 3 steps). The in-process runs share one `import espnet2` (15-20 s); the real-kill test starts two
training processes (about 25 s each; its epochs have 40 steps so that the kill lands inside epoch 2). About 1-1.5
minutes in all.
"""

import copy
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

espnet2 = pytest.importorskip("espnet2")
import soundfile  # noqa: E402
from espnet2.train.reporter import SubReporter  # noqa: E402

from espnet_pate.dpsgd.accounting import compute_epsilon  # noqa: E402
from espnet_pate.dpsgd.options import dp_options  # noqa: E402
from espnet_pate.dpsgd.per_example import PerExampleGradients  # noqa: E402
from espnet_pate.dpsgd.sampler import DpBatchSampler, build_units  # noqa: E402
from espnet_pate.dpsgd.plan import plan_dp  # noqa: E402
from espnet_pate.dpsgd.step import DpSgdRuntime  # noqa: E402
from espnet_pate.dpsgd.task import DPSGDASRTransducerTask  # noqa: E402
from espnet_pate.dpsgd.trainer import DPSGDTrainer, DPSGDTrainerOptions, TrainerOptions  # noqa: E402
from espnet_pate.privacy.ledger import BudgetExceededError, LedgerMissingError, PrivacyLedger  # noqa: E402
from espnet_pate.privacy.orders import DEFAULT_ORDERS  # noqa: E402
from espnet_pate.report.privacy_json import write_privacy_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET_EPS = 8.0
WORDS = ["ab", "cab", "bad", "dace", "fed", "gag"]
CHARS = list("abcdefg")

TINY_CONFIG = """\
frontend: default
frontend_conf: {n_fft: 512, hop_length: 160, n_mels: 20}
encoder_conf:
    main_conf: {pos_wise_act_type: swish, conv_mod_act_type: swish}
    input_conf: {vgg_like: false, conv_size: 8, subsampling_factor: 4, output_size: 32}
    body_conf:
    -   {block_type: conformer, hidden_size: 32, linear_size: 64, heads: 2, conv_mod_kernel_size: 5,
         num_blocks: 1}
decoder: rnn
decoder_conf: {embed_size: 16, hidden_size: 16, num_layers: 1}
joint_network_conf: {joint_space_size: 24}
model_conf: {transducer_weight: 1.0, report_cer: false, report_wer: false}
batch_type: sorted
batch_size: 4
max_epoch: 2
num_workers: 0
optim: adam
optim_conf: {lr: 0.002}
best_model_criterion: [[valid, loss, min]]
keep_nbest_models: 2
use_tensorboard: false
use_matplotlib: false
seed: 0
grad_clip: 1.0e-9
dp_clip_norm: 1.0
dp_target_epsilon: 8
dp_delta: 1e-5
dp_unit: utterance
dp_sampling: poisson
dp_accountant: rdp
dp_seed: 3
"""


# ------------------------------------------------------------------------------------------- fixtures
def _make_dir(root: Path, prefix: str, n_spk: int, per: int, seed: int) -> Path:
    (root / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tables = {"wav.scp": [], "text": [], "utt2spk": [], "speech_shape": []}
    for s in range(n_spk):
        for j in range(per):
            utt = f"{prefix}{s}-{j:02d}"
            n = int(rng.integers(4000, 9000))
            t = np.arange(n) / 16000
            x = 0.1 * np.sin(2 * np.pi * (200 + 100 * s + 30 * j) * t) + 0.01 * rng.standard_normal(n)
            path = root / "wav" / f"{utt}.wav"
            soundfile.write(path, x.astype(np.float32), 16000)
            tables["wav.scp"].append(f"{utt} {path}")
            tables["text"].append(f"{utt} " + " ".join(rng.choice(WORDS, size=2)))
            tables["utt2spk"].append(f"{utt} {prefix}{s}")
            tables["speech_shape"].append(f"{utt} {n}")
    for name, lines in tables.items():
        (root / name).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpsgd")
    train = _make_dir(root / "train", "trspk", n_spk=4, per=3, seed=0)
    dev = _make_dir(root / "dev", "dvspk", n_spk=2, per=2, seed=1)
    tokens = root / "tokens.txt"
    tokens.write_text("\n".join(["<blank>", "<unk>", "<space>", *CHARS, "<sos/eos>"]) + "\n")
    config = root / "tiny_dpsgd.yaml"
    config.write_text(TINY_CONFIG)
    return {"root": root, "train": train, "dev": dev, "tokens": tokens, "config": config}


def common_args(corpus, outdir, *extra):
    tr, dv = corpus["train"], corpus["dev"]
    return ["--config", str(corpus["config"]), "--output_dir", str(outdir), "--ngpu", "0",
            "--token_type", "char", "--token_list", str(corpus["tokens"]), "--resume", "true",
            "--train_data_path_and_name_and_type", f"{tr}/wav.scp,speech,sound",
            "--train_data_path_and_name_and_type", f"{tr}/text,text,text",
            "--train_shape_file", f"{tr}/speech_shape",
            "--valid_data_path_and_name_and_type", f"{dv}/wav.scp,speech,sound",
            "--valid_data_path_and_name_and_type", f"{dv}/text,text,text",
            "--valid_shape_file", f"{dv}/speech_shape", *extra]


def train(corpus, outdir, *extra):
    DPSGDASRTransducerTask.main(cmd=common_args(corpus, outdir, *extra))
    return Path(outdir)


def report(outdir):
    return json.loads((Path(outdir) / "dp_report.json").read_text())


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def runs(corpus):
    """An uninterrupted run, and a run crashed in the middle of epoch 2 then resumed with --resume true."""
    root = corpus["root"]
    straight = train(corpus, root / "exp_straight")

    crashed = root / "exp_crashed"
    real_step = DpSgdRuntime.step
    calls = {"n": 0}

    def crashing_step(self, model, utt_ids, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 1 has 3 steps: this is the 2nd step of epoch 2
            raise Crash("killed mid-epoch")
        return real_step(self, model, utt_ids, batch)

    DpSgdRuntime.step = crashing_step
    try:
        with pytest.raises(Crash):
            train(corpus, crashed)
    finally:
        DpSgdRuntime.step = real_step
    ckpt = torch.load(crashed / "checkpoint.pth", map_location="cpu", weights_only=False)
    crashed_state = {"epoch": ckpt["reporter"]["epoch"], "dp": ckpt["optimizers"][0]["dp_sgd"]}
    assert not (crashed / "dp_report.json").exists()
    train(corpus, crashed)  # resume
    return {"straight": straight, "crashed": crashed, "crashed_state": crashed_state}


# ---------------------------------------------------------------------------------------------- options
def test_yaml_dp_options_accepted(corpus, tmp_path):
    parser = DPSGDASRTransducerTask.get_parser()
    args = parser.parse_args(common_args(corpus, tmp_path / "x"))
    o = dp_options(args)
    assert o["delta"] == 1e-5 and isinstance(o["delta"], float)  # YAML reads 1e-5 as a string
    assert o["target_epsilon"] == TARGET_EPS and o["noise_multiplier"] is None
    assert o["unit"] == "utterance" and o["sampling"] == "poisson" and o["seed"] == 3
    # the command line overrides the YAML
    args = parser.parse_args(common_args(corpus, tmp_path / "x", "--dp_unit", "speaker", "--dp_clip_norm", "0.5"))
    assert dp_options(args)["unit"] == "speaker" and dp_options(args)["clip_norm"] == 0.5
    # a misspelt DP key in the YAML is rejected, as ESPnet rejects any unregistered key
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_CONFIG + "dp_clipnorm: 1.0\n")
    with pytest.raises(SystemExit):
        parser.parse_args(["--config", str(bad)])
    # exactly one of noise multiplier and target epsilon; values are checked
    both = parser.parse_args(common_args(corpus, tmp_path / "x", "--dp_noise_multiplier", "1.0"))
    with pytest.raises(ValueError, match="exactly one"):
        dp_options(both)
    wrong = parser.parse_args(common_args(corpus, tmp_path / "x"))
    wrong.dp_unit = "household"  # from a YAML, choices are not enforced by argparse
    with pytest.raises(ValueError, match="dp_unit"):
        dp_options(wrong)


def test_plan_calibrates_noise_before_training(corpus, tmp_path):
    args = DPSGDASRTransducerTask.get_parser().parse_args(common_args(corpus, tmp_path / "x"))
    plan = plan_dp(args)
    assert plan["num_utterances"] == 12 and plan["num_units"] == 12
    assert plan["sample_rate"] == pytest.approx(4 / 12) and plan["steps_per_epoch"] == 3
    assert plan["planned_steps"] == 6 and plan["noise_calibrated_to_target"]
    assert plan["planned_epsilon"] <= TARGET_EPS
    eps = compute_epsilon(plan["sample_rate"], plan["noise_multiplier"], 6, 1e-5, "rdp")
    assert eps == pytest.approx(plan["planned_epsilon"]) and eps > TARGET_EPS - 0.05  # tight calibration
    args.dp_unit = "speaker"
    plan = plan_dp(args)
    assert plan["num_units"] == 4 and plan["expected_batch_units"] == pytest.approx(4 / 3)
    # model selection on training (sensitive) statistics, or validating on the training data, is refused
    args.best_model_criterion = [["train", "loss", "min"]]
    with pytest.raises(ValueError, match="best_model_criterion"):
        DPSGDTrainer.build_options(args)


# --------------------------------------------------------------------------------------------- sampling
def test_poisson_sampler():
    s = DpBatchSampler(num_units=200, sample_rate=0.05, steps_per_epoch=400, seed=1)
    sizes = np.array([len(b) for b in s.epoch(1)])
    assert len(sizes) == 400
    assert abs(sizes.mean() - 10) < 0.6 and sizes.std() > 2  # Binomial(200, 0.05): mean 10, sd 3.1
    assert [b.tolist() for b in s.epoch(1)] == [b.tolist() for b in s.epoch(1)]  # (seed, epoch) reproducible
    assert [b.tolist() for b in s.epoch(2)] != [b.tolist() for b in s.epoch(1)]
    counts = np.bincount(np.concatenate(s.epoch(1)), minlength=200)
    assert counts.min() > 0 and abs(counts.mean() - 20) < 1  # every unit at rate q
    tiny = DpBatchSampler(num_units=3, sample_rate=0.1, steps_per_epoch=50, seed=0)
    assert any(len(b) == 0 for b in tiny.epoch(1))  # empty steps happen and are kept
    os_a = DpBatchSampler(200, 0.05, 5).epoch(1)  # no seed: operating-system entropy
    os_b = DpBatchSampler(200, 0.05, 5).epoch(1)
    assert [b.tolist() for b in os_a] != [b.tolist() for b in os_b]
    shuffle = DpBatchSampler(num_units=10, sample_rate=0.3, steps_per_epoch=3, sampling="shuffle", seed=0)
    b = shuffle.epoch(1)
    assert [len(x) for x in b] == [3, 3, 3] and len(set(np.concatenate(b).tolist())) == 9


def test_speaker_units_group_utterances():
    keys = ["a1", "b1", "a2", "c1", "b2"]
    ids, groups = build_units(keys, "speaker", {"a1": "A", "a2": "A", "b1": "B", "b2": "B", "c1": "C"})
    assert ids == ["A", "B", "C"] and groups == [["a1", "a2"], ["b1", "b2"], ["c1"]]
    with pytest.raises(ValueError, match="no speaker"):
        build_units(keys, "speaker", {"a1": "A"})


# --------------------------------------------------------------------------------------------- the step
def tiny_model(corpus, tmp_path):
    args = DPSGDASRTransducerTask.get_parser().parse_args(common_args(corpus, tmp_path / "m"))
    args.token_list = [ln for ln in corpus["tokens"].read_text().split("\n") if ln]
    args.input_size = None
    args.dp_report = {"not": "training"}  # as from a config.yaml: no planning
    torch.manual_seed(0)
    model = DPSGDASRTransducerTask.build_model(args)
    for mod in model.modules():  # non-trivial frozen statistics, as after public pretraining
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    model.train()
    return model, args


def tiny_batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(3000, 8000, (n,), generator=g)
    speech = torch.randn(n, int(lens.max()), generator=g) * 0.1
    for i, m in enumerate(lens):
        speech[i, m:] = 0.0
    tlens = torch.randint(1, 6, (n,), generator=g)
    text = torch.full((n, int(tlens.max())), -1, dtype=torch.long)
    for i, m in enumerate(tlens):
        text[i, :m] = torch.randint(3, 10, (int(m),), generator=g)
    return {"speech": speech, "speech_lengths": lens, "text": text, "text_lengths": tlens}


def plan_for(unit="utterance", sigma=0.7, expected=3.0, max_phys=32):
    return {"unit": unit, "sampling": "poisson", "sample_rate": 0.25, "expected_batch_units": expected,
            "clip_norm": 0.5, "noise_multiplier": sigma, "delta": 1e-5, "accountant": "rdp", "seed": 11,
            "per_example_method": "vmap", "max_physical_batch_size": max_phys}


class RecordingSGD(torch.optim.SGD):
    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.seen = []

    def step(self, closure=None):
        self.seen.append({id(p): (None if p.grad is None else p.grad.detach().clone())
                          for g in self.param_groups for p in g["params"]})
        return super().step(closure)


def test_optimizer_sees_exactly_the_noisy_gradient(corpus, tmp_path):
    model, args = tiny_model(corpus, tmp_path)
    batch = tiny_batch(3)
    utts = ["u0", "u1", "u2"]
    plan = plan_for()
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainerOptions)}
    fields.update(grad_clip=1e-9, log_interval=1)  # ESPnet's clipping would shrink everything: must not apply
    rt = DpSgdRuntime(plan)
    options = DPSGDTrainerOptions(**fields, dp_plan=plan, dp_utt2unit=None, dp_runtime=rt)
    opt = RecordingSGD(model.parameters())
    iterator = [(utts, copy.deepcopy(batch)), ([], {})]  # a sampled batch, then an empty Poisson draw
    DPSGDTrainer.train_one_epoch(model=model, iterator=iterator, optimizers=[opt], schedulers=[None],
                                 scaler=None, reporter=SubReporter("train", 1, 0), summary_writer=None,
                                 options=options, distributed_option=None)
    assert rt.accountant.steps == 2 and rt.accountant.segments == [(0.25, 0.7, 2)]  # the empty step counts

    ref_rt = DpSgdRuntime(plan)  # same seed and epoch: the same noise stream
    ref_rt.begin_epoch(model, 1)
    torch.manual_seed(0)
    engine = PerExampleGradients(model)
    model.eval()  # no dropout in the tiny model anyway; make the comparison deterministic
    g1, _ = engine.noisy_grad(batch["speech"], batch["speech_lengths"], batch["text"], batch["text_lengths"],
                              clip_norm=0.5, noise_multiplier=0.7, expected_batch_size=3.0,
                              generator=ref_rt.generator)
    g2, _ = engine.noisy_grad(batch["speech"][:0], batch["speech_lengths"][:0], batch["text"][:0],
                              batch["text_lengths"][:0], clip_norm=0.5, noise_multiplier=0.7,
                              expected_batch_size=3.0, generator=ref_rt.generator)
    names = dict(model.named_parameters())
    for step, ref in zip(opt.seen, (g1, g2)):
        for n, p in names.items():
            torch.testing.assert_close(step[id(p)], ref[n], rtol=1e-5, atol=1e-7)
    # the noise is really there: the empty step is pure noise of std sigma*C/expected
    flat = torch.cat([opt.seen[1][id(p)].reshape(-1) for p in names.values()])
    assert flat.std().item() == pytest.approx(0.7 * 0.5 / 3.0, rel=0.05)


def test_speaker_unit_clips_each_speakers_sum(corpus, tmp_path):
    model, _ = tiny_model(corpus, tmp_path)
    model.eval()
    batch = tiny_batch(5, seed=1)
    utts = ["a1", "b1", "a2", "c1", "b2"]
    utt2unit = {"a1": "A", "a2": "A", "b1": "B", "b2": "B", "c1": "C"}
    engine = PerExampleGradients(model)
    ref, stats = engine.clipped_grad_sum(batch["speech"], batch["speech_lengths"], batch["text"],
                                         batch["text_lengths"], clip_norm=0.5,
                                         group_ids=[utt2unit[u] for u in utts])
    assert stats.num_units == 3 and (stats.norms > 0.5).all()  # clipping is active on every speaker
    for max_phys in (32, 2):  # one pass, or speakers packed into passes of <= 2 utterances (never split)
        rt = DpSgdRuntime(plan_for("speaker", sigma=0.0, expected=1.0, max_phys=max_phys), utt2unit)
        rt.begin_epoch(model, 1)
        got, st = rt.noisy_gradient(model, utts, batch)
        assert st["batch_units"] == 3
        for n in ref:
            torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-6)
    # per-utterance clipping would differ
    per_utt, _ = engine.clipped_grad_sum(batch["speech"], batch["speech_lengths"], batch["text"],
                                         batch["text_lengths"], clip_norm=0.5)
    assert any(not torch.allclose(per_utt[n], ref[n], rtol=1e-3) for n in ref)


def test_nonfinite_unit_gradient_contributes_zero(corpus, tmp_path):
    model, _ = tiny_model(corpus, tmp_path)
    model.eval()
    batch = tiny_batch(3, seed=2)
    rt = DpSgdRuntime(plan_for(sigma=0.0, expected=1.0))
    rt.begin_epoch(model, 1)
    clean, _ = rt.noisy_gradient(model, ["u0", "u1"], {k: v[:2] for k, v in batch.items()})
    bad = {k: v.clone() for k, v in batch.items()}
    bad["speech"][2, :100] = float("nan")
    got, st = rt.noisy_gradient(model, ["u0", "u1", "u2"], bad)
    assert st["nonfinite_units"] == 1
    for n in clean:
        torch.testing.assert_close(got[n], clean[n], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------- end to end
def test_resumed_run_reports_same_epsilon_as_uninterrupted(runs):
    a, b = report(runs["straight"]), report(runs["crashed"])
    st = runs["crashed_state"]
    assert st["epoch"] == 1 and st["dp"]["accountant"]["segments"][0][2] == 3  # killed during epoch 2
    assert a["steps"] == b["steps"] == 6 and a["epochs_trained"] == b["epochs_trained"] == 2
    assert a["segments"] == b["segments"]
    assert a["epsilon"] == b["epsilon"]
    assert [h["epsilon"] for h in a["history"]] == [h["epsilon"] for h in b["history"]]
    # with the DP seed fixed (and ESPnet's per-epoch seeding), the resumed model is the uninterrupted one
    ma = torch.load(runs["straight"] / "2epoch.pth", map_location="cpu")
    mb = torch.load(runs["crashed"] / "2epoch.pth", map_location="cpu")
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], rtol=0, atol=0)


def test_privacy_json_and_config_record_final_epsilon(runs):
    out = runs["straight"]
    priv = json.loads((out / "privacy.json").read_text())
    assert priv["mechanism"] == "dpsgd" and priv["unit"] == "utterance" and priv["data_dependent"] is False
    assert 0 < priv["epsilon"] <= TARGET_EPS and priv["delta"] == 1e-5 and priv["target_epsilon"] == TARGET_EPS
    rep = report(out)
    assert rep["epsilon"] == priv["epsilon"] and rep["within_target"] and rep["seed_fixed_not_for_release"]
    assert rep["epsilon"] == pytest.approx(compute_epsilon(rep["sample_rate"], rep["noise_multiplier"], 6, 1e-5))
    conf = yaml.safe_load((out / "config.yaml").read_text())
    assert conf["dp_report"]["status"] == "finished" and conf["dp_report"]["epsilon"] == rep["epsilon"]
    assert conf["dp_clip_norm"] == 1.0 and float(conf["dp_target_epsilon"]) == TARGET_EPS
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert ckpt["optimizers"][0]["dp_sgd"]["accountant"]["segments"] == [[rep["sample_rate"],
                                                                           rep["noise_multiplier"], 6]]
    assert (out / "valid.loss.ave.pth").exists()  # ESPnet's n-best averaging ran


def test_checkpoint_decodes_with_stock_speech2text(runs, corpus):
    from espnet2.bin.asr_transducer_inference import Speech2Text
    from espnet2.tasks.asr_transducer import ASRTransducerTask

    out = runs["straight"]
    model, _ = ASRTransducerTask.build_model_from_file(out / "config.yaml", None, "cpu")
    state = torch.load(out / "valid.loss.ave.pth", map_location="cpu")
    missing, unexpected = model.load_state_dict(state, strict=True)  # every key, same names
    s2t = Speech2Text(asr_train_config=str(out / "config.yaml"), asr_model_file=str(out / "valid.loss.ave.pth"),
                      beam_size=2)
    wav = corpus["dev"] / "wav" / "dvspk0-00.wav"
    speech, _ = soundfile.read(wav, dtype="float32")
    nbest = s2t(speech)
    text = s2t.hypotheses_to_results(nbest)[0][0] if nbest else ""
    assert isinstance(text, str)
    # the DP-exact model and the stock model compute the same encoder output for one utterance
    dp_model, _ = DPSGDASRTransducerTask.build_model_from_file(out / "config.yaml", out / "valid.loss.ave.pth")
    dp_model.eval()
    x = torch.from_numpy(speech)[None]
    with torch.no_grad():
        e1, _ = s2t.asr_model.encode(x, torch.tensor([x.size(1)]))
        e2, _ = dp_model.encode(x, torch.tensor([x.size(1)]))
    torch.testing.assert_close(e1, e2, rtol=1e-5, atol=1e-5)


def test_speaker_level_run(corpus):
    out = train(corpus, corpus["root"] / "exp_speaker", "--dp_unit", "speaker", "--max_epoch", "1",
                "--dp_target_epsilon", "none", "--dp_noise_multiplier", "2.0", "--dp_seed", "none")
    rep = report(out)
    assert rep["unit"] == "speaker" and rep["num_units"] == 4 and rep["steps"] == 3
    assert rep["seed_fixed_not_for_release"] is False and rep["noise_calibrated_to_target"] is False
    assert rep["epsilon"] == pytest.approx(compute_epsilon(1 / 3, 2.0, 3, 1e-5))
    assert json.loads((out / "privacy.json").read_text())["unit"] == "speaker"


def test_cli_killed_mid_epoch_and_resumed(corpus):
    """The real thing: the CLI process is SIGKILLed during epoch 2, then resumed with --resume true.

    Epochs of 40 steps make epoch 2 last seconds, so the kill lands inside it even on a loaded machine. The
    uninterrupted run's epsilon is that of its plan (one segment of max_epoch * steps_per_epoch steps: see
    test_privacy_json_and_config_record_final_epsilon); the resumed run must report exactly that.
    """
    out = corpus["root"] / "exp_killed"
    cmd = [sys.executable, "-m", "espnet_pate.bin.asr_transducer_dp_train",
           *common_args(corpus, out, "--dp_steps_per_epoch", "40", "--dp_seed", "none")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 600
    # 1epoch.pth is saved after checkpoint.pth: once it exists, the epoch-1 checkpoint is complete
    while not (out / "1epoch.pth").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-3000:]
    assert not (out / "dp_report.json").exists(), "the run finished before it could be killed"
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert ckpt["reporter"]["epoch"] == 1
    assert ckpt["optimizers"][0]["dp_sgd"]["accountant"]["segments"][0][2] == 40

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "The training was resumed using" in done.stderr
    rep = report(out)
    assert rep["steps"] == 80 and rep["epochs_trained"] == 2
    assert rep["segments"] == [[rep["sample_rate"], rep["noise_multiplier"], 80]]
    assert rep["epsilon"] == rep["planned_epsilon"] <= TARGET_EPS  # = the uninterrupted run's figure
    assert json.loads((out / "privacy.json").read_text())["epsilon"] == rep["epsilon"]


# --------------------------------------------------------------------------- the ledger and the claims around
def make_ledger(tmp_path, budget):
    path = tmp_path / "privacy_ledger.jsonl"
    PrivacyLedger(str(path), eps_budget=budget, delta=1e-5)
    return path


def independent_rdp(segments):
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    acc = rdp_privacy_accountant.RdpAccountant(orders=list(DEFAULT_ORDERS))
    for q, sigma, n in segments:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), int(n))
    return np.asarray(acc.rdp)


def test_run_that_cannot_fit_the_ledger_is_refused_before_training(corpus, tmp_path):
    ledger = make_ledger(tmp_path, 2.0)  # the target is 8
    out = tmp_path / "refused"
    with pytest.raises(BudgetExceededError, match="Nothing was trained"):
        train(corpus, out, "--dp_ledger", str(ledger))
    assert not list(out.glob("*.pth")) and PrivacyLedger(str(ledger)).releases == []
    with pytest.raises(LedgerMissingError):
        train(corpus, tmp_path / "nowhere", "--dp_ledger", str(tmp_path / "missing.jsonl"))


def test_finished_model_is_recorded_once_in_the_ledger(corpus, tmp_path):
    ledger = make_ledger(tmp_path, 64.0)
    out = train(corpus, tmp_path / "recorded", "--dp_ledger", str(ledger))
    rep = report(out)
    (rel,) = PrivacyLedger(str(ledger)).releases
    assert rel.mechanism == "dpsgd" and rel.queries == 6 and not rel.data_dependent
    np.testing.assert_allclose(rel.rdp, independent_rdp(rep["segments"]), rtol=1e-12)
    model = (out / "valid.loss.ave.pth").resolve()
    assert rel.outputs == "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    priv = json.loads((out / "privacy.json").read_text())
    assert priv["ledger"] == str(ledger) and priv["met_target"] is True
    for released in ("privacy.json", "dp_report.json", "config.yaml"):  # the id is a function of the data
        assert rel.release_id not in (out / released).read_text()
    before = ledger.read_bytes()
    train(corpus, out, "--dp_ledger", str(ledger))  # a rerun of the finished run: nothing recorded twice
    assert ledger.read_bytes() == before
    cli = subprocess.run([sys.executable, "-m", "espnet_pate.bin.privacy_ledger", "record-dpsgd", "--ledger",
                          str(ledger), str(out)], cwd=ROOT, capture_output=True, text=True)
    assert cli.returncode == 0 and "already recorded" in cli.stdout, cli.stderr
    assert ledger.read_bytes() == before


def test_resume_with_other_settings_lists_every_noise_segment(corpus, tmp_path):
    out = tmp_path / "two_segments"
    train(corpus, out, "--max_epoch", "1", "--dp_target_epsilon", "none", "--dp_noise_multiplier", "0.6")
    train(corpus, out)  # resumed for epoch 2, with sigma calibrated to epsilon 8 for 6 steps alone
    rep = report(out)
    priv = json.loads((out / "privacy.json").read_text())
    assert [g["steps"] for g in priv["segments"]] == [3, 3]
    assert priv["segments"][0]["noise_multiplier"] == 0.6
    assert priv["segments"][1]["noise_multiplier"] == rep["noise_multiplier"] != 0.6
    assert priv["epsilon"] > TARGET_EPS and priv["met_target"] is False  # both segments are paid
    assert "0.6" in priv["note"] and priv["num_units_public"] == 12


def test_wandb_and_an_init_model_that_saw_sensitive_data_are_refused(corpus, tmp_path):
    args = DPSGDASRTransducerTask.get_parser().parse_args(common_args(corpus, tmp_path / "x"))
    args.use_wandb = True
    with pytest.raises(ValueError, match="use_wandb"):
        DPSGDTrainer.build_options(args)
    args.use_wandb = False
    for mech in ("teacher", "none", "dpsgd", None):
        model_dir = tmp_path / f"init_{mech}"
        model_dir.mkdir()
        if mech:
            write_privacy_info(model_dir, mechanism=mech)
        args.init_param = [f"{model_dir}/valid.loss.ave.pth"]
        with pytest.raises(ValueError, match="init_param"):
            DPSGDTrainer.build_options(args)
    write_privacy_info(tmp_path / "public", mechanism="public_only", epsilon=0)
    args.init_param = [f"{tmp_path}/public/valid.loss.ave.pth:encoder:encoder"]
    assert DPSGDTrainer.build_options(args).dp_plan["noise_calibrated_to_target"]
