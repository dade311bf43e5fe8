"""Make ESPnet's transducer model (espnet 202511) give every example a gradient that depends on it alone.

DP-SGD clips each example's gradient, which is only meaningful if that gradient is a function of the example
(and of data-independent randomness) alone: not of the other examples in the batch, nor of how long the longest
one is (../shared/PRIVACY.md, "DP-SGD").  The stock model breaks this in four places; ``make_dp_exact(model)``
fixes them in place, at model-build time, without editing ESPnet's files and *without changing any
parameter/buffer name*, so ``state_dict()`` keys are unchanged and the checkpoints load and decode in the stock
``espnet2.bin.asr_transducer_inference.Speech2Text`` (which loads with ``strict=False``: a renamed or missing key
would be silently left at its initial value, so keeping the names is the point).

1. ``encoder.embed`` (``ConvInput``): espnet 202511 truncates the padding mask to the subsampled length
   (``mask[:, :T']``) instead of subsampling it, so every example gets about the longest one's encoder length.
   Fixed by computing each example's length through each Conv2d/MaxPool2d of the block (the same arithmetic
   PyTorch uses) and filling frames beyond it before each layer (zeros before a convolution, as the example alone
   would see its zero padding; -inf before a max-pool, which ignores them).  For a single unpadded utterance
   (decoding) the result is identical to the stock block.
2. BatchNorm (the conformer convolution module's ``conv_mod.norm``, and any other): batch statistics mix the
   examples, and the running statistics are an un-noised release of private data.  ESPnet 202511 has no config
   option for the conformer module's norm (``main_conf.conv_mod_norm_type`` applies to Branchformer /
   E-Branchformer only; their modules use LayerNorm).  ``conv_norm="frozen_batch_norm"`` (default) keeps the
   module and its keys and always normalises with the running statistics (what the stock model does in eval
   mode), which never update: a per-channel affine map, the same function at training time and in the stock
   Speech2Text.  Initialise the statistics from public data (e.g. a model pretrained on public data) if they
   should be anything but mean 0 / variance 1.  ``conv_norm="layer_norm"`` replaces it by a per-frame LayerNorm
   over channels: per-example too, but a different function with no running statistics, so the stock
   Speech2Text would decode it *wrongly* (it would load weight/bias into a BatchNorm with default statistics):
   use it only with a decoder that applies ``make_dp_exact`` as well.
3. The frontend (default: STFT with ``center=True``) reflect-pads the *padded* waveform, so an utterance's last
   frames differ between alone (reflection of itself) and in a padded batch (reflection of zeros). SpecAugment
   draws mask positions/widths from the padded length. Both are parameter-free; they are made to process each
   utterance alone (a loop over the batch) and the results are padded.
4. Checks (``ValueError`` if not satisfied): no dynamic chunk training (its chunk size is drawn from the batch's
   longest length), no k2 pruned loss, encoder blocks are Conformer (the others are unverified: the Conv1d block,
   for one, convolves over padding), decoder is RNN or stateless.  Dropout draws independent masks per element:
   data-independent randomness, fine.  The RNN decoder reads labels left to right, so right padding cannot
   reach a valid position; its embedding's padding row gets zero gradient; the joint network is per (t, u).

``model.criterion_transducer`` is set to ``espnet_pate.asr.rnnt_loss.RNNTLoss`` (torchaudio) if it is unset.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional

import torch

from espnet_pate.asr.frozen_batch_norm import freeze_batch_norms, swap_class as _swap_class
from espnet_pate.asr.rnnt_loss import RNNTLoss

CONV_NORMS = ("frozen_batch_norm", "layer_norm")

__all__ = [
    "CONV_NORMS",
    "ChannelLayerNorm",
    "make_dp_exact",
    "is_dp_exact",
    "subsampled_lengths",
    "per_example_feats",
]


# ------------------------------------------------------------------------------------------- helpers
def _pair(v, i: int) -> int:
    return v[i] if isinstance(v, (tuple, list)) else v


def _out_len(lengths: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    """Output length along dim -2 (time) of a Conv2d / MaxPool2d given input lengths, as PyTorch computes it."""
    k, s, p, d = (_pair(layer.kernel_size, 0), _pair(layer.stride, 0), _pair(layer.padding, 0),
                  _pair(layer.dilation, 0))
    num = lengths + 2 * p - d * (k - 1) - 1
    if isinstance(layer, torch.nn.MaxPool2d) and layer.ceil_mode:
        out = torch.div(num + s - 1, s, rounding_mode="floor") + 1
        # the last pooling window must start inside the input or the left padding
        out = torch.where((out - 1) * s >= lengths + p, out - 1, out)
    else:
        out = torch.div(num, s, rounding_mode="floor") + 1
    return torch.clamp(out, min=0)


def subsampled_lengths(conv_input: torch.nn.Module, lengths: torch.Tensor) -> torch.Tensor:
    """Per-example output lengths of an ESPnet ``ConvInput`` block for input lengths (B,)."""
    for layer in conv_input.conv:
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.MaxPool2d)):
            lengths = _out_len(lengths, layer)
    return lengths


def _time_pad_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) bool, True beyond each length (ESPnet's convention: True = padding)."""
    return torch.arange(size, device=lengths.device).unsqueeze(0) >= lengths.unsqueeze(1)


# ----------------------------------------------------------------------------------- 1. conv input
class _ExactConvInputMixin:
    """ConvInput.forward with the mask subsampled per example (not truncated)."""

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None):
        if mask is None:
            return super().forward(x, mask)
        lengths = (~mask).sum(-1)  # mask: (B, T) True = padding
        h = x.unsqueeze(1)  # (B, 1, T, F)
        for layer in self.conv:
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.MaxPool2d)):
                pad = _time_pad_mask(lengths, h.size(2))[:, None, :, None]
                fill = 0.0 if isinstance(layer, torch.nn.Conv2d) else float("-inf")
                h = h.masked_fill(pad, fill)
                h = layer(h)
                lengths = _out_len(lengths, layer)
            else:
                h = layer(h)
        pad = _time_pad_mask(lengths, h.size(2))
        h = h.masked_fill(pad[:, None, :, None], 0.0)  # keep padded frames finite (no -inf from a pool)
        b, c, t, f = h.size()
        h = h.transpose(1, 2).contiguous().view(b, t, c * f)
        if self.output is not None:
            h = self.output(h)
        return h, pad


# -------------------------------------------------------------------------------------- 2. norms
class ChannelLayerNorm(torch.nn.LayerNorm):
    """LayerNorm over channels of each frame of a (B, C, T) tensor (replacement for BatchNorm1d(C))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


# --------------------------------------------------------------------------- 3. frontend / specaug
def _pad_stack(seqs: List[torch.Tensor]) -> torch.Tensor:
    t = max(int(s.size(0)) for s in seqs)
    out = seqs[0].new_zeros((len(seqs), t) + tuple(seqs[0].shape[1:]))
    for i, s in enumerate(seqs):
        out[i, : s.size(0)] = s
    return out


class _PerExampleSeqMixin:
    """forward(x, lengths) applied to each example alone (unpadded), outputs zero-padded."""

    def forward(self, x: torch.Tensor, x_lengths: Optional[torch.Tensor] = None, *args, **kwargs):
        if x_lengths is None or x.size(0) == 1 and int(x_lengths[0]) == x.size(1):
            return super().forward(x, x_lengths, *args, **kwargs)
        outs, lens = [], []
        for i in range(x.size(0)):
            n = int(x_lengths[i])
            y, yl = super().forward(x[i : i + 1, :n], x_lengths[i : i + 1], *args, **kwargs)
            yl_i = int(yl[0]) if yl is not None else y.size(1)
            outs.append(y[0, :yl_i])
            lens.append(yl_i)
        return _pad_stack(outs), torch.tensor(lens, dtype=x_lengths.dtype, device=x_lengths.device)


def per_example_feats(model: torch.nn.Module, speech: torch.Tensor, speech_lengths: torch.Tensor):
    """Features of each utterance computed alone (frontend, SpecAugment in training, normalisation), padded.

    Returns ``(feats (B, T, F), feats_lengths (B,))``: what ``model.encode`` feeds the encoder.
    """
    feats_list, lens = [], []
    for i in range(speech.size(0)):
        n = int(speech_lengths[i])
        s, sl = speech[i : i + 1, :n], speech_lengths[i : i + 1]
        f, fl = model._extract_feats(s, sl)
        if model.specaug is not None and model.training:
            f, fl = model.specaug(f, fl)
        if model.normalize is not None:
            f, fl = model.normalize(f, fl)
        n_f = int(fl[0])
        feats_list.append(f[0, :n_f])
        lens.append(n_f)
    return _pad_stack(feats_list), torch.tensor(lens, dtype=torch.long, device=speech.device)


# ------------------------------------------------------------------------------------------ main
def _check_supported(model: torch.nn.Module) -> None:
    from espnet2.asr_transducer.decoder.rnn_decoder import RNNDecoder
    from espnet2.asr_transducer.decoder.stateless_decoder import StatelessDecoder
    from espnet2.asr_transducer.encoder.blocks.conformer import Conformer
    from espnet2.asr_transducer.encoder.blocks.conv_input import ConvInput

    enc = model.encoder
    if getattr(enc, "dynamic_chunk_training", False):
        raise ValueError("dynamic_chunk_training draws its chunk size from the batch's longest utterance: disable it")
    if getattr(model, "use_k2_pruned_loss", False):
        raise ValueError("the k2 pruned loss is not supported by make_dp_exact")
    if not isinstance(enc.embed, ConvInput):
        raise ValueError(f"unsupported encoder input block {type(enc.embed).__name__}")
    bad = [type(b).__name__ for b in enc.encoders.blocks if not isinstance(b, Conformer)]
    if bad:
        raise ValueError(f"encoder blocks {sorted(set(bad))} are not verified per-example exact (use conformer)")
    if not isinstance(model.decoder, (RNNDecoder, StatelessDecoder)):
        raise ValueError(f"decoder {type(model.decoder).__name__} is not verified per-example exact")
    if getattr(model, "fastemit_lambda", 0.0):
        raise ValueError("FastEmit is not supported (fastemit_lambda must be 0)")


def make_dp_exact(
    model: torch.nn.Module,
    conv_norm: str = "frozen_batch_norm",
    per_example_frontend: bool = True,
    set_criterion: bool = True,
) -> torch.nn.Module:
    """Fix ``model`` (an ``ESPnetASRTransducerModel``) in place so per-example gradients are exact; returns it.

    Idempotent.  ``model._dp_exact`` records what was changed (a dict).  See the module docstring.
    """
    if conv_norm not in CONV_NORMS:
        raise ValueError(f"conv_norm must be one of {CONV_NORMS}, got {conv_norm!r}")
    _check_supported(model)
    changes: Dict[str, object] = dict(getattr(model, "_dp_exact", {}) or {})

    # 1. encoder input block: per-example subsampled mask
    _swap_class(model.encoder.embed, _ExactConvInputMixin, "conv_input")
    changes["encoder.embed"] = "mask subsampled per example"

    # 2. normalisation layers that mix examples
    replaced = []
    if conv_norm == "layer_norm":
        for name, mod in list(model.named_modules()):
            conv = getattr(mod, "norm", None)
            if name.endswith("conv_mod") and isinstance(conv, torch.nn.BatchNorm1d):
                ln = ChannelLayerNorm(conv.num_features, eps=conv.eps).to(
                    device=conv.weight.device, dtype=conv.weight.dtype
                )
                mod.norm = ln
                replaced.append(f"{name}.norm")
        if replaced:
            logging.warning(
                "make_dp_exact(conv_norm='layer_norm'): %d BatchNorm replaced by LayerNorm; the stock Speech2Text "
                "cannot decode such a checkpoint correctly", len(replaced))
    frozen = freeze_batch_norms(model)
    changes["conv_norm"] = conv_norm
    changes["frozen_batch_norm"] = frozen
    changes["layer_norm"] = replaced

    # 3. frontend / SpecAugment per example
    if per_example_frontend:
        for attr in ("frontend", "specaug"):
            mod = getattr(model, attr, None)
            if mod is not None:
                _swap_class(mod, _PerExampleSeqMixin, "per_example_seq")
                changes[attr] = "per example"

    # 4. loss
    if set_criterion and getattr(model, "criterion_transducer", None) is None:
        model.criterion_transducer = RNNTLoss(blank_id=0, reduction="mean")
        changes["criterion_transducer"] = "RNNTLoss(torchaudio)"

    model._dp_exact = changes
    return model


def is_dp_exact(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "_dp_exact", None))
