"""One DP-SGD run's state between steps: the plan, the accountant, the noise generator and the gradient engine.

``DpSgdRuntime.step`` is the DP step of ../shared/PRIVACY.md, "DP-SGD": the noisy average of the clipped unit
gradients (``PerExampleGradients``) written into ``p.grad``, then the step recorded by the accountant (an empty
Poisson batch included). Its ``state_dict`` rides in the optimizer's state, hence in ESPnet's checkpoint.pth.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from espnet_pate.dpsgd.accounting import DpSgdAccountant
from espnet_pate.dpsgd.per_example import Grads, PerExampleGradients, make_noise_generator
from espnet_pate.dpsgd.plan import spent_epsilon
from espnet_pate.dpsgd.sampler import epoch_seed_sequence

logger = logging.getLogger(__name__)  # never the root logger before ESPnet's basicConfig

NOISE_STREAM = 2  # the noise's own stream of a fixed --dp_seed (the sampler's is DpBatchSampler.STREAM)
# settings whose change on a resume is logged: the accountant composes the steps of both settings
RESUME_CHECKED_KEYS = ("sample_rate", "noise_multiplier", "clip_norm", "unit", "sampling", "delta", "accountant",
                "num_units")


class DpSgdRuntime:
    """What one DP-SGD training run carries between steps: the plan, accountant, noise generator, engine."""

    def __init__(self, plan: Dict, utt2unit: Optional[Dict[str, str]] = None):
        self.plan = dict(plan)
        self.utt2unit = utt2unit
        self.accountant = DpSgdAccountant(delta=plan["delta"], accountant=plan["accountant"])
        self.history: List[Dict[str, object]] = []
        self.generator: Optional[torch.Generator] = None
        self.engine: Optional[PerExampleGradients] = None

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, object]:
        return {"accountant": self.accountant.state_dict(), "history": list(self.history),
                "plan": dict(self.plan)}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.accountant.load_state_dict(state["accountant"])
        self.history = list(state.get("history", []))
        old = state.get("plan", {})
        if old.get("unit", self.plan["unit"]) != self.plan["unit"]:
            raise RuntimeError(f"the checkpoint was trained with the {old.get('unit')} unit, this run uses "
                               f"{self.plan['unit']}: the two guarantees do not compose into one")
        changed = [k for k in RESUME_CHECKED_KEYS if old.get(k) != self.plan.get(k)]
        if changed:
            logger.warning("DP-SGD resumed with different settings (%s): the accountant composes both, so the "
                           "final epsilon may exceed a target calibrated for this run alone",
                           ", ".join(f"{k}: {old.get(k)} -> {self.plan.get(k)}" for k in changed))
        self.accountant.delta = self.plan["delta"]
        self.accountant.accountant = self.plan["accountant"]
        logger.info("DP-SGD accountant restored: %d steps over %d epochs", self.accountant.steps, len(self.history))

    # ---------------------------------------------------------------------------------------- epoch
    def begin_epoch(self, model: torch.nn.Module, epoch: int) -> None:
        if self.engine is None or self.engine.model is not model:
            self.engine = PerExampleGradients(model, method=self.plan["per_example_method"])
        device = next(p for p in model.parameters()).device
        seed = self.plan.get("seed")
        if seed is not None:
            seed = int(epoch_seed_sequence(seed, epoch, NOISE_STREAM).generate_state(1, np.uint64)[0] >> 1)
        self.generator = make_noise_generator(seed, device=device)  # None: operating-system entropy

    def end_epoch(self, epoch: int) -> Dict[str, object]:
        entry = {"epoch": int(epoch), "steps": self.accountant.steps, "epsilon": self.epsilon()}
        self.history = [h for h in self.history if h["epoch"] < epoch] + [entry]
        return entry

    def epsilon(self) -> float:
        return float(spent_epsilon(self.accountant)["eps"])

    # ----------------------------------------------------------------------------------------- step
    def _engine_call(self, model: torch.nn.Module, utt_ids: Sequence[str], batch: Dict[str, torch.Tensor]):
        assert self.engine is not None and self.engine.model is model, "begin_epoch(model) first"
        p = self.plan
        gids = [self.utt2unit[u] for u in utt_ids] if p["unit"] == "speaker" else list(utt_ids)
        args = tuple(batch.get(k) for k in ("speech", "speech_lengths", "text", "text_lengths"))
        return args, dict(clip_norm=float(p["clip_norm"]), noise_multiplier=float(p["noise_multiplier"]),
                          expected_batch_size=p["expected_batch_units"], group_ids=gids,
                          max_rows=int(p["max_physical_batch_size"]), generator=self.generator)

    def noisy_gradient(self, model: torch.nn.Module, utt_ids: Sequence[str], batch: Dict[str, torch.Tensor]
                       ) -> Tuple[Grads, Dict[str, float]]:
        """(sum of clipped unit gradients + N(0, (sigma C)^2)) / (q N_units), and operator statistics."""
        args, kwargs = self._engine_call(model, utt_ids, batch)
        noisy, stats = self.engine.noisy_grad(*args, **kwargs)
        return noisy, stats.as_dict()

    def step(self, model: torch.nn.Module, utt_ids: Sequence[str], batch: Dict[str, torch.Tensor]
             ) -> Dict[str, float]:
        """Write the noisy gradient into ``p.grad`` (None for frozen parameters) and record the step."""
        args, kwargs = self._engine_call(model, utt_ids, batch)
        stats = self.engine.dp_step_grads(*args, **kwargs)
        self.accountant.step(self.plan["sample_rate"], self.plan["noise_multiplier"])
        return stats.as_dict()
