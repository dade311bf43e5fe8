"""BatchNorm that always normalises with its running statistics and never updates them.

Two users: DP-SGD (batch statistics mix examples, and updated running statistics would be an un-noised release
of private data) and teachers whose lower layers ESPnet's ``freeze_param`` freezes (``freeze_param`` stops the
gradients but not the running-statistics updates, so a "frozen" block would still drift on its shard and stop
being shared across teachers). The class is swapped in place: parameter and buffer names are unchanged, so
checkpoints load and decode in the stock Speech2Text, which uses the same statistics in eval mode.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F


def swap_class(module: torch.nn.Module, mixin: type, tag: str) -> None:
    """Give ``module`` a subclass of its class with ``mixin``'s methods first (names/state_dict unchanged)."""
    cls = type(module)
    if getattr(cls, "_swapped_tag", None) == tag:
        return
    new_cls = type(f"Patched{cls.__name__}", (mixin, cls), {"_swapped_tag": tag, "__module__": __name__})
    module.__class__ = new_cls


class FrozenBatchNormMixin:
    """BatchNorm that always uses (and never updates) its running statistics: per example, same keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def _under(name: str, prefixes: Sequence[str]) -> bool:
    # ESPnet's freeze_param matching: the name itself or anything below it.
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze_batch_norms(model: torch.nn.Module, prefixes: Optional[Sequence[str]] = None) -> List[str]:
    """Freeze every BatchNorm of ``model`` (or those under ``prefixes``) in place; returns their names."""
    frozen = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            continue
        if prefixes is not None and not _under(name, prefixes):
            continue
        if mod.running_mean is None:
            raise ValueError(f"{name}: BatchNorm without running statistics cannot be frozen")
        swap_class(mod, FrozenBatchNormMixin, "frozen_bn")
        frozen.append(name)
    return frozen
