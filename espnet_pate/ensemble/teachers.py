"""K teachers held as one ensemble: the part they share runs once, the rest runs batched over teachers.

Teachers are fine-tuned from one public model with part of it frozen (conf/train_teacher_{full,top,head}.yaml),
so many tensors are bitwise identical across teachers. ``TeacherEnsemble`` compares every tensor of every
teacher with teacher 0's and keeps:

* one copy of each identical tensor (an ``expand``-ed view stands in for its K copies: no memory);
* a stacked [K, ...] tensor for each teacher-specific one.

The encoder is a pipeline of stages (``encoder.embed``, ``encoder.encoders.blocks.<i>``,
``encoder.encoders.norm_blocks``; frontend and feature normalisation before them). The leading stages whose
tensors are all identical form the shared prefix: they run once per utterance on teacher 0's modules. From the
first teacher-specific stage on, every stage runs for all K teachers at once (``torch.func.vmap`` over
``functional_call`` with the stacked tensors). The decoder and the joint network are batched by hand
(``espnet_pate.ensemble.stacked_heads``).

BatchNorm's ``num_batches_tracked`` counter is not compared (unused in eval mode). Its running statistics are;
teachers trained by PateASRTransducerTask keep them frozen under ``freeze_param``, so a frozen block stays shared
(older checkpoints, whose frozen blocks drifted on their shards, still decode: those blocks run per teacher).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from espnet_pate.asr.decode import CONFIG_FILE, MODEL_FILE  # noqa: F401 -- the experiment layout, re-exported
from espnet_pate.ensemble.stacked_heads import StackedJoint, StackedRNNDecoder, stack_or_share
from espnet_pate.privacy.digests import file_sha256

log = logging.getLogger(__name__)

_IGNORED = ("num_batches_tracked",)


def teacher_dirs_in(path: os.PathLike | str) -> List[Path]:
    """``path/teacher_0 .. teacher_{K-1}`` (numeric order); each must hold config.yaml and the checkpoint."""
    from espnet_pate.data.kaldi_dir import numbered_dirs

    return numbered_dirs(path, "teacher_")


def load_model(model_dir: os.PathLike | str, device: str = "cpu", model_file: str = MODEL_FILE):
    """(model in eval mode, train args) of one experiment directory, by ESPnet's own loader."""
    from espnet2.tasks.asr_transducer import ASRTransducerTask

    model_dir = Path(model_dir)
    for f in (CONFIG_FILE, model_file):
        if not (model_dir / f).is_file():
            raise FileNotFoundError(f"{model_dir / f}: missing (is the teacher trained? see its train.log)")
    model, args = ASRTransducerTask.build_model_from_file(str(model_dir / CONFIG_FILE), str(model_dir / model_file),
                                                          device)
    model.eval()
    model.encoder.dynamic_chunk_training = False  # as Speech2Text does
    return model, args


# ------------------------------------------------------------------------------------------------ ensemble
@dataclass
class EncoderStage:
    name: str  # module path in the model, e.g. "encoder.encoders.blocks.1"
    kind: str  # "embed" | "block" | "norm"
    shared: bool  # every tensor identical across teachers


def _encoder_stages(model) -> List[Tuple[str, str]]:
    stages = [("encoder.embed", "embed")]
    stages += [(f"encoder.encoders.blocks.{i}", "block") for i in range(len(model.encoder.encoders.blocks))]
    stages.append(("encoder.encoders.norm_blocks", "norm"))
    return stages


def _run_stage(module, kind: str, x, mask, pos_enc):
    if kind == "embed":
        return module(x, mask)
    if kind == "block":
        return module(x, pos_enc, mask, chunk_mask=None)[0], mask
    return module(x), mask


class TeacherEnsemble:
    """K teachers of one architecture; see the module docstring.

    ``TeacherEnsemble.from_dirs(dirs)`` loads them one at a time (peak memory: the ensemble plus one model).
    ``encode(speech)`` gives every teacher's encoder output [K, T, D] for one utterance, exactly as ESPnet's
    ``Speech2Text`` computes it for each teacher alone. ``decoder``/``joint`` score steps for all teachers.
    """

    def __init__(self, models: Iterable, names: Optional[Sequence[str]] = None, checksums=None):
        it = iter(models)
        base = next(it)
        self.base = base.eval()
        self.base.encoder.dynamic_chunk_training = False
        ref = {k: v for k, v in base.state_dict(keep_vars=False).items() if not k.endswith(_IGNORED)}
        per_key: Dict[str, List[torch.Tensor]] = {k: [v] for k, v in ref.items()}
        count = 1
        for model in it:
            sd = model.state_dict()
            if set(k for k in sd if not k.endswith(_IGNORED)) != set(ref):
                raise ValueError(f"teacher {count} has another architecture than teacher 0")
            for k, v in ref.items():
                other = sd[k]
                if other.shape != v.shape:
                    raise ValueError(f"teacher {count}: {k} has shape {tuple(other.shape)}, teacher 0 {tuple(v.shape)}")
                per_key[k].append(v if torch.equal(other, v) else other.detach().clone())
            count += 1
            del model, sd
        self.num_teachers = count
        self.names = list(names) if names is not None else [f"teacher_{k}" for k in range(count)]
        self.checksums = list(checksums) if checksums is not None else None
        self.train_args = None  # set by from_dirs: teacher 0's training options (token type, bpe model)
        self.identical = {k: all(t is ts[0] for t in ts) for k, ts in per_key.items()}

        for prefix in ("frontend.", "normalize."):
            differing = [k for k in per_key if k.startswith(prefix) and not self.identical[k]]
            if differing:
                raise NotImplementedError(f"teachers differ in their {prefix[:-1]} ({differing[:3]}): the features "
                                          "must come from one public frontend and public statistics")
        self.stages: List[EncoderStage] = []
        for name, kind in _encoder_stages(base):
            keys = [k for k in per_key if k.startswith(name + ".")]
            self.stages.append(EncoderStage(name, kind, all(self.identical[k] for k in keys)))
        n_shared = next((i for i, s in enumerate(self.stages) if not s.shared), len(self.stages))
        self.shared_stages, self.teacher_stages = self.stages[:n_shared], self.stages[n_shared:]

        def stacked(prefix: str) -> Dict[str, torch.Tensor]:
            return {k[len(prefix):]: stack_or_share(ts)[0] for k, ts in per_key.items() if k.startswith(prefix)}

        self._stage_weights = {s.name: stacked(s.name + ".") for s in self.teacher_stages}
        self._stage_modules = {s.name: base.get_submodule(s.name) for s in self.stages}
        self._per_key = per_key  # for memory_report; tensors are shared, not copied

        dec = base.decoder
        if type(dec).__name__ != "RNNDecoder":
            raise NotImplementedError(f"lock-step decoding supports ESPnet's RNNDecoder, not {type(dec).__name__}")
        self.decoder = StackedRNNDecoder(stacked("decoder."), dec.dlayers, dec.dtype, dec.output_size)
        act = base.joint_network.joint_activation
        if any(True for _ in act.parameters()):
            raise NotImplementedError("joint activations with parameters are not supported")
        self.joint = StackedJoint(stacked("joint_network."), act)
        self.token_list = list(base.token_list)
        self.vocab_size = base.vocab_size
        self.blank_id = 0  # ESPnet transducers: blank is id 0 (BeamSearchTransducer reads logp[0])
        self.subsampling_factor = base.encoder.embed.subsampling_factor

    @classmethod
    def from_dirs(cls, dirs: Sequence[os.PathLike | str], device: str = "cpu",
                  model_file: str = MODEL_FILE) -> "TeacherEnsemble":
        dirs = [Path(d) for d in dirs]
        if not dirs:
            raise ValueError("no teachers")
        args = []

        def models():
            for d in dirs:
                model, train_args = load_model(d, device, model_file)
                args.append(train_args)
                yield model

        sums = [file_sha256(d / model_file) for d in dirs]
        ens = cls(models(), names=[str(d) for d in dirs], checksums=sums)
        ens.train_args = args[0]
        return ens

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    # -------------------------------------------------------------------------------------------- encoder
    @torch.no_grad()
    def features(self, speech) -> Tuple[torch.Tensor, torch.Tensor]:
        """Frontend and normalisation of one utterance, as ``Speech2Text.__call__``: ([1, T, F], [1])."""
        speech = torch.as_tensor(np.asarray(speech, dtype=np.float32)).to(self.device)
        speech = speech.reshape(1, -1)
        lengths = torch.full((1,), speech.shape[1], dtype=torch.long, device=self.device)
        feats, feats_len = self.base._extract_feats(speech, lengths)
        if self.base.normalize is not None:
            feats, feats_len = self.base.normalize(feats, feats_len)
        return feats, feats_len

    def too_short(self, num_feature_frames: int) -> bool:
        from espnet2.asr_transducer.utils import check_short_utt

        return check_short_utt(self.subsampling_factor, num_feature_frames)[0]

    @torch.no_grad()
    def encode(self, speech) -> torch.Tensor:
        """Encoder outputs [K, T, D] of one utterance (raises ``TooShortUttError`` like ESPnet's encoder)."""
        from espnet2.asr_transducer.utils import TooShortUttError

        out = self.encode_batch([speech])[0]
        if out is None:
            raise TooShortUttError("too short for subsampling", 0, 7)
        return out

    def _vmapped(self, stage: EncoderStage, weights, x, mask, pos_enc, x_batched: bool):
        module = self._stage_modules[stage.name]

        def one(w, xi):
            return _run_stage_functional(module, stage.kind, w, xi, mask, pos_enc)

        return torch.func.vmap(one, in_dims=(0, 0 if x_batched else None))(weights, x)

    @torch.no_grad()
    def encode_batch(self, speeches: Sequence) -> List[Optional[torch.Tensor]]:
        """Encoder outputs [K, T_b, D] of several utterances (None for one too short for the subsampling).

        Features, the shared prefix and a teacher-specific input block run per utterance, exactly as
        ``Speech2Text`` runs them. The teacher-specific blocks after the input block run once for the padded
        batch and all teachers: their attention masks padded frames and their convolution module zeroes them
        first, so each utterance's frames equal its encoding alone (to float rounding, tested).
        """
        from espnet2.asr_transducer.utils import make_source_mask

        items: List[Optional[Tuple[torch.Tensor, bool]]] = []
        for speech in speeches:
            x, x_len = self.features(speech)
            if self.too_short(x.shape[1]):
                items.append(None)
                continue
            mask = make_source_mask(x_len)
            pos_enc = None
            for stage in self.shared_stages:
                x, mask = _run_stage(self._stage_modules[stage.name], stage.kind, x, mask, pos_enc)
                if stage.kind == "embed":
                    pos_enc = self.base.encoder.pos_enc(x)
            batched = False
            if self.teacher_stages and self.teacher_stages[0].kind == "embed":  # per utterance (padding is unsafe)
                stage = self.teacher_stages[0]
                x = self._vmapped(stage, self._stage_weights[stage.name], x, mask, None, False)  # [K, 1, T, D]
                batched = True
            items.append((x, batched))
        valid = [it for it in items if it is not None]
        if not valid:
            return [None] * len(items)
        rest = [s for s in self.teacher_stages if s.kind != "embed"]
        lengths = [x.shape[-2] for x, _ in valid]
        any_batched = any(b for _, b in valid)
        dim = valid[0][0].shape[-1]
        shape = (self.num_teachers, len(valid), max(lengths), dim) if any_batched else (len(valid), max(lengths), dim)
        x = valid[0][0].new_zeros(shape)
        for i, (xi, batched) in enumerate(valid):
            if any_batched:
                x[:, i, : lengths[i]] = xi[:, 0] if batched else xi[0]
            else:
                x[i, : lengths[i]] = xi[0]
        mask = make_source_mask(torch.tensor(lengths, device=x.device))
        pos_enc = self.base.encoder.pos_enc(x[0] if any_batched else x)
        for stage in rest:
            x = self._vmapped(stage, self._stage_weights[stage.name], x, mask, pos_enc, any_batched)
            any_batched = True
        if not any_batched:  # nothing teacher-specific in the encoder: one output serves every teacher
            x = x.expand(self.num_teachers, *x.shape)
        out, j = [], 0
        for it in items:
            if it is None:
                out.append(None)
            else:
                out.append(x[:, j, : lengths[j]].contiguous())  # a copy: the padded batch can be freed
                j += 1
        return out

    # --------------------------------------------------------------------------------------------- memory
    def memory_report(self) -> Dict[str, int]:
        """Bytes held: shared tensors once, teacher-specific ones K times; and what K full models would hold."""
        shared = specific = 0
        for k, ts in self._per_key.items():
            size = ts[0].numel() * ts[0].element_size()
            if self.identical[k]:
                shared += size
            else:
                specific += size * self.num_teachers
        full = sum(ts[0].numel() * ts[0].element_size() for ts in self._per_key.values()) * self.num_teachers
        return {"shared_bytes": shared, "teacher_specific_bytes": specific, "total_bytes": shared + specific,
                "k_full_models_bytes": full}

    def describe(self) -> Dict:
        return {"num_teachers": self.num_teachers, "teachers": self.names,
                "shared_stages": [s.name for s in self.shared_stages],
                "teacher_stages": [s.name for s in self.teacher_stages],
                "shared_tensors": int(sum(self.identical.values())), "tensors": len(self.identical),
                **self.memory_report()}


def _run_stage_functional(module, kind, weights, x, mask, pos_enc):
    """One stage with one teacher's tensors (called under vmap over teachers)."""
    if kind == "embed":
        return torch.func.functional_call(module, weights, (x, mask))[0]
    if kind == "block":
        return torch.func.functional_call(module, weights, (x, pos_enc, mask), {"chunk_mask": None})[0]
    return torch.func.functional_call(module, weights, (x,))
