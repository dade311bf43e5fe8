"""Tiny random RNN-T teachers and data for tests and benchmarks (no training, seconds to build).

``write_toy_setup(root, num_teachers)`` writes, under ``root``:

* ``public/``: a tiny ESPnet transducer experiment (``config.yaml`` + ``valid.loss.ave.pth``), character tokens;
* ``teachers/teacher_<k>/``: copies with the top encoder block, the decoder and the joint network perturbed
  (as a ``top`` fine-tune would leave them: ``encoder.embed`` and ``encoder.encoders.blocks.0`` identical);
* ``data/``: a Kaldi directory of short synthetic waveforms with a ``text`` file.

The joint network's output layer is scaled (``sharpness``) so the posteriors are peaked like a trained model's:
random models with flat posteriors make every vote a coin toss, and ESPnet's beam search with beam 1 then
leaves the greedy path often.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

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
    """A random tiny transducer in eval mode, with non-trivial BatchNorm statistics and peaked posteriors."""
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


def perturbed_copy(model, seed: int, scale: float = 0.1, trainable: Sequence[str] = TOP_TRAINABLE):
    """A copy whose tensors under ``trainable`` get relative Gaussian noise (a stand-in for a fine-tune)."""
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in list(out.named_parameters()) + list(out.named_buffers()):
            if any(name == t or name.startswith(t + ".") for t in trainable) and p.is_floating_point():
                ref = float(p.abs().mean()) if p.numel() else 1.0
                p.add_(scale * ref * torch.randn(p.shape, generator=g))
    return out.eval()


def write_experiment(model, args, out_dir: os.PathLike | str, model_file: str = "valid.loss.ave.pth") -> Path:
    """``out_dir/config.yaml`` and ``out_dir/<model_file>`` as ESPnet's trainer leaves them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(vars(args), sort_keys=True))
    torch.save(model.state_dict(), out_dir / model_file)
    (out_dir / ".done").touch()
    return out_dir


def write_toy_data(out_dir: os.PathLike | str, num_utts: int = 6, seed: int = 0, sample_rate: int = 16000,
                   min_seconds: float = 0.4, max_seconds: float = 1.2, num_speakers: int = 2) -> Dict[str, str]:
    """A Kaldi directory of synthetic waveforms (tones in noise) with made-up transcripts; returns the text."""
    import soundfile

    from espnet_pate.data.kaldi_dir import write_kaldi_dir

    out_dir = Path(out_dir)
    wav_dir = out_dir / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    wav_scp, utt2spk, text = {}, {}, {}
    letters = list("abcdefghij")
    for i in range(num_utts):
        spk = f"spk{i % num_speakers}"
        utt = f"{spk}-utt{i:03d}"
        n = int(rng.uniform(min_seconds, max_seconds) * sample_rate)
        tt = np.arange(n) / sample_rate
        sig = 0.05 * rng.standard_normal(n)
        for _ in range(3):
            sig += 0.2 * np.sin(2 * np.pi * rng.uniform(100, 2000) * tt) * (rng.uniform(size=n) > 0.3)
        path = wav_dir / f"{utt}.wav"
        soundfile.write(path, (0.5 * sig / np.abs(sig).max()).astype(np.float32), sample_rate)
        wav_scp[utt], utt2spk[utt] = str(path), spk
        text[utt] = " ".join("".join(rng.choice(letters, size=rng.integers(1, 4))) for _ in range(rng.integers(1, 4)))
    write_kaldi_dir(out_dir, wav_scp, utt2spk, text)
    return text


def write_toy_setup(root: os.PathLike | str, num_teachers: int = 3, num_utts: int = 6, seed: int = 0,
                    trainable: Sequence[str] = TOP_TRAINABLE, scale: float = 0.1,
                    sharpness: float = 8.0, blank_bias: float = 4.0) -> Dict[str, Path]:
    root = Path(root)
    args = toy_args()
    public = build_toy_model(seed, sharpness, blank_bias, args)
    write_experiment(public, args, root / "public")
    teacher_dirs: List[Path] = []
    for k in range(num_teachers):
        teacher = perturbed_copy(public, seed=1000 * (seed + 1) + k, scale=scale, trainable=trainable)
        teacher_dirs.append(write_experiment(teacher, args, root / "teachers" / f"teacher_{k}"))
    write_toy_data(root / "data", num_utts=num_utts, seed=seed)
    return {"public": root / "public", "teachers": root / "teachers", "data": root / "data",
            "teacher_dirs": teacher_dirs}
