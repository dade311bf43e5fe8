"""Tiny random RNN-T teachers and data for tests and benchmarks (no training, seconds to build).

``write_toy_setup(root, num_teachers)`` writes, under ``root``:

* ``public/``: a tiny ESPnet transducer experiment (``config.yaml`` + ``valid.loss.ave.pth``), character tokens;
* ``teachers/teacher_<k>/``: copies with the top encoder block, the decoder and the joint network perturbed
  (as a ``top`` fine-tune would leave them: ``encoder.embed`` and ``encoder.encoders.blocks.0`` identical);
* ``data/``: a Kaldi directory of short synthetic waveforms with a ``text`` file.

By default the public model is fitted to the toy data for a few seconds (``fitted_toy_state``) so that it behaves
like a trained one: random models with flat posteriors emit endlessly on one frame (ESPnet's default beam search
has no cap and never returns) and make ESPnet's beam-1 search leave the greedy path.
"""
from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
import yaml

TOY_TOKENS = ["<blank>", "<unk>", "<space>"] + list("abcdefghij") + ["<sos/eos>"]
TOP_TRAINABLE = ("encoder.encoders.blocks.1", "encoder.encoders.norm_blocks", "decoder", "joint_network")
HEAD_TRAINABLE = ("decoder", "joint_network")


def toy_args(token_list: Sequence[str] = TOY_TOKENS):
    from espnet2.tasks.asr_transducer import ASRTransducerTask

    args = ASRTransducerTask.get_parser().parse_args([])
    args.token_list = list(token_list)
    args.token_type = "char"
    args.bpemodel = None
    args.input_size = None
    args.frontend = "default"
    args.frontend_conf = {"n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 40}
    args.specaug, args.specaug_conf = None, {}
    args.normalize, args.normalize_conf = None, {}
    args.encoder_conf = {
        "main_conf": {"pos_wise_act_type": "swish", "conv_mod_act_type": "swish"},
        "input_conf": {"vgg_like": False, "conv_size": 8, "subsampling_factor": 4, "output_size": 32},
        "body_conf": [{"block_type": "conformer", "hidden_size": 32, "linear_size": 64, "heads": 2,
                       "conv_mod_kernel_size": 5, "num_blocks": 2}],
    }
    args.decoder, args.decoder_conf = "rnn", {"embed_size": 16, "hidden_size": 16, "num_layers": 1}
    args.joint_network_conf = {"joint_space_size": 24}
    args.model_conf = {}
    return args


def build_toy_model(seed: int = 0, sharpness: float = 8.0, blank_bias: float = 4.0, args=None):
    """A random tiny transducer in eval mode, with non-trivial BatchNorm statistics; ``sharpness`` scales the
    joint network's output layer (peaked posteriors) and ``blank_bias`` favours blank."""
    from espnet_pate.asr.transducer_task import PateASRTransducerTask

    torch.manual_seed(seed)
    model = PateASRTransducerTask.build_model(args or toy_args())
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
        out = model.joint_network.lin_out
        out.weight.mul_(sharpness)
        out.bias.mul_(sharpness)
        out.bias[0] += blank_bias
    return model.eval()


def fit_toy_model(model, wavs: Sequence[np.ndarray], texts: Sequence[str], steps: int = 150, lr: float = 3e-3,
                  seed: int = 0):
    """A few hundred Adam steps on toy data (full batch), so the model behaves like a trained one: peaked
    posteriors, blank on most frames, a few tokens per utterance, no endless emission on one frame."""
    torch.manual_seed(seed)
    token_ids = {t: i for i, t in enumerate(model.token_list)}
    labels = [[token_ids["<space>" if c == " " else c] for c in text] for text in texts]
    speech = torch.zeros(len(wavs), max(len(w) for w in wavs))
    for i, w in enumerate(wavs):
        speech[i, : len(w)] = torch.as_tensor(w)
    speech_len = torch.tensor([len(w) for w in wavs])
    text = torch.full((len(labels), max(len(y) for y in labels)), -1, dtype=torch.long)
    for i, y in enumerate(labels):
        text[i, : len(y)] = torch.tensor(y)
    text_len = torch.tensor([len(y) for y in labels])
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = model(speech, speech_len, text, text_len)[0]
        loss.backward()
        opt.step()
    return model.eval()


def perturbed_copy(model, seed: int, scale: float = 0.1, trainable: Sequence[str] = TOP_TRAINABLE):
    """A copy whose tensors under ``trainable`` get relative Gaussian noise (a stand-in for a fine-tune)."""
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in list(out.named_parameters()) + list(out.named_buffers()):
            if any(name == t or name.startswith(t + ".") for t in trainable) and p.is_floating_point():
                if name.endswith("running_var"):  # stays positive
                    p.mul_(torch.exp(scale * torch.randn(p.shape, generator=g)))
                    continue
                ref = float(p.abs().mean()) if p.numel() else 1.0
                p.add_(scale * ref * torch.randn(p.shape, generator=g))
    return out.eval()


def reference_encoder(model, wave):
    """One model's encoder output for one waveform, the way Speech2Text computes it (a test reference)."""
    with torch.no_grad():
        x = torch.as_tensor(wave)[None]
        feats, lens = model._extract_feats(x, torch.tensor([x.shape[1]]))
        if model.normalize is not None:
            feats, lens = model.normalize(feats, lens)
        return model.encoder(feats, lens)[0][0]


def write_experiment(model, args, out_dir: os.PathLike | str, model_file: str = "valid.loss.ave.pth") -> Path:
    """``out_dir/config.yaml`` and ``out_dir/<model_file>`` as ESPnet's trainer leaves them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(vars(args), sort_keys=True))
    torch.save(model.state_dict(), out_dir / model_file)
    (out_dir / ".done").touch()
    return out_dir


def toy_utterances(num_utts: int = 6, seed: int = 0, sample_rate: int = 16000, min_seconds: float = 0.4,
                   max_seconds: float = 1.0, num_speakers: int = 2) -> Dict[str, tuple]:
    """{utt: (waveform, speaker, transcript)}: tones in noise with made-up letter transcripts (deterministic)."""
    rng = np.random.default_rng(seed)
    letters = list("abcdefghij")
    out = {}
    for i in range(num_utts):
        spk = f"spk{i % num_speakers}"
        n = int(rng.uniform(min_seconds, max_seconds) * sample_rate)
        tt = np.arange(n) / sample_rate
        sig = 0.05 * rng.standard_normal(n)
        for _ in range(3):
            sig += 0.2 * np.sin(2 * np.pi * rng.uniform(100, 2000) * tt) * (rng.uniform(size=n) > 0.3)
        words = ["".join(rng.choice(letters, size=rng.integers(1, 4))) for _ in range(rng.integers(1, 4))]
        out[f"{spk}-utt{i:03d}"] = ((0.5 * sig / np.abs(sig).max()).astype(np.float32), spk, " ".join(words))
    return out


def write_toy_data(out_dir: os.PathLike | str, num_utts: int = 6, seed: int = 0, sample_rate: int = 16000,
                   **kwargs) -> Dict[str, str]:
    """A Kaldi directory (wav.scp, utt2spk, spk2utt, text) of ``toy_utterances``; returns the text."""
    import soundfile

    from espnet_pate.data.kaldi_dir import write_kaldi_dir

    out_dir = Path(out_dir)
    wav_dir = out_dir / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    wav_scp, utt2spk, text = {}, {}, {}
    for utt, (wave, spk, words) in toy_utterances(num_utts, seed, sample_rate, **kwargs).items():
        path = wav_dir / f"{utt}.wav"
        soundfile.write(path, wave, sample_rate)
        wav_scp[utt], utt2spk[utt], text[utt] = str(path), spk, words
    write_kaldi_dir(out_dir, wav_scp, utt2spk, text)
    return text


@functools.lru_cache(maxsize=4)
def fitted_toy_state(seed: int = 0, num_utts: int = 4, steps: int = 100, lr: float = 1e-2):
    """State dict of a toy model fitted to ``toy_utterances(num_utts, seed, max_seconds=0.6)`` (cached in the
    process, so test modules share one fit of a few seconds)."""
    import soundfile  # noqa: F401  (fail early where audio I/O is missing)

    data = toy_utterances(num_utts, seed, max_seconds=0.6)
    model = build_toy_model(seed, sharpness=1.0, blank_bias=0.0)
    fit_toy_model(model, [w for w, _, _ in data.values()], [t for _, _, t in data.values()], steps=steps, lr=lr,
                  seed=seed)
    return {k: v.clone() for k, v in model.state_dict().items()}


def write_toy_setup(root: os.PathLike | str, num_teachers: int = 3, num_utts: int = 4, seed: int = 0,
                    trainable: Sequence[str] = TOP_TRAINABLE, scale: float = 0.05, fitted: bool = True,
                    sharpness: float = 8.0, blank_bias: float = 4.0) -> Dict[str, Path]:
    """Public model, K teachers and the data (see the module docstring). ``fitted``: the public model is fitted
    to the data (``fitted_toy_state``), else random with ``sharpness``/``blank_bias``."""
    root = Path(root)
    args = toy_args()
    public = build_toy_model(seed, sharpness, blank_bias, args=args)
    if fitted:
        public.load_state_dict(fitted_toy_state(seed))
    write_experiment(public, args, root / "public")
    teacher_dirs: List[Path] = []
    for k in range(num_teachers):
        teacher = perturbed_copy(public, seed=1000 * (seed + 1) + k, scale=scale, trainable=trainable)
        teacher_dirs.append(write_experiment(teacher, args, root / "teachers" / f"teacher_{k}"))
    write_toy_data(root / "data", num_utts=num_utts, seed=seed, max_seconds=0.6)
    return {"public": root / "public", "teachers": root / "teachers", "data": root / "data",
            "teacher_dirs": teacher_dirs}
