"""DP-SGD as an ESPnet Trainer: ESPnet's loop, checkpoints, logging, resume and model averaging, with a DP step.

``DPSGDTrainer`` replaces only ``train_one_epoch`` (the step) and wraps ``run`` (accountant in the checkpoint,
final report).  Each step (../shared/PRIVACY.md, "DP-SGD"):

1. a batch of Poisson-sampled units (utterances, or speakers with all their utterances:
   ``espnet_pate.dpsgd.sampler``), possibly empty, arrives from the iterator as ``(utt_ids, batch)``;
2. each unit's gradient is computed exactly per example (``PerExampleGradients``, through ``DpSgdRuntime.step``:
   the model went through
   ``make_dp_exact`` in the Task's ``build_model``), summed over the unit's utterances, set to zero if it is not
   finite (a function of that unit alone), clipped to ``dp_clip_norm`` and summed over units (in physical chunks of
   at most ``dp_max_physical_batch_size`` utterances, a unit never split);
3. N(0, (sigma C)^2) is added and the sum divided by the *expected* number of units per step, q * N_units;
4. that tensor is written to ``p.grad`` and the optimizer steps: no ESPnet ``grad_clip`` (ignored), no
   ``grad_noise``, ``accum_grad`` and AMP (rejected), nothing else touches the gradient;
5. the accountant records the step (q, sigma), an empty batch included.

The accountant's ledger rides in the optimizer's ``state_dict`` (optimizer hooks), so ESPnet's ``checkpoint.pth``
carries it and ``--resume true`` restores it with the model: a resumed run composes exactly the steps that reach
the released model.  The steps of an interrupted epoch are discarded with that epoch's model and never reach an
output (except the operator's log lines).  At the end, ``dp_report.json`` and ``privacy.json`` are written in the
output directory and ``config.yaml`` gets the same report under ``dp_report``; ``privacy.json`` lists every noise
segment the run used (a resume with other settings adds one) and whether the final epsilon met the target.

With ``--dp_ledger`` (the sensitive data set's privacy ledger, ``espnet_pate.privacy.ledger``) a run whose planned
cost does not fit the ledger's remaining budget is refused before training, and the finished model is recorded
there (``espnet_pate.dpsgd.release``) before its privacy.json is written.

What the guarantee covers, and what is refused around it:

* The number of training units (utterances or speakers) is treated as public: the sampling rate q, the steps per
  epoch and the noise calibration are computed from it, and it appears in the plan and in config.yaml. The
  guarantee is for add/remove-one neighbours with that size taken as known.
* ``--use_wandb true`` is refused: it would send un-noised statistics of the sensitive data (losses, gradient
  norms) to a third party.
* ``--init_param`` must point into a model trained on public data only (its directory's privacy.json says
  mechanism ``public_only``): starting from a teacher, the non-private fine-tune or another DP-SGD model would
  compose with that model's cost, which this run's fresh accountant does not know.

The parts: ``options`` (the ``--dp_*`` options and their defaults), ``plan`` (sampling rate, steps, noise for the
target epsilon), ``step`` (the DP step and the accountant), ``release`` (the final report, the ledger, privacy.json);
this module is the ESPnet glue around them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Dict, Optional

from espnet2.schedulers.abs_scheduler import AbsBatchStepScheduler
from espnet2.torch_utils.device_funcs import to_device
from espnet2.train.trainer import Trainer, TrainerOptions

from espnet_pate.dpsgd.options import add_dp_arguments
from espnet_pate.dpsgd.plan import load_units, plan_dp
from espnet_pate.dpsgd.release import REPORT_FILE, check_plan_fits, data_files, final_report, release_model
from espnet_pate.dpsgd.sampler import DpIterFactory
from espnet_pate.dpsgd.step import DpSgdRuntime
from espnet_pate.report.privacy_json import PUBLIC_MECHANISMS, is_public_model, read_privacy_info

logger = logging.getLogger(__name__)  # never the root logger before ESPnet's basicConfig

STATE_KEY = "dp_sgd"  # key of the DP state inside the optimizer's state_dict (hence inside checkpoint.pth)


@dataclasses.dataclass
class DPSGDTrainerOptions(TrainerOptions):
    dp_plan: Dict
    dp_utt2unit: Optional[Dict]
    dp_runtime: Optional[DpSgdRuntime] = None


def _check_compatible(args: argparse.Namespace) -> None:
    bad = []
    if getattr(args, "grad_noise", False):
        bad.append("--grad_noise true (ESPnet's gradient noise is not the DP mechanism)")
    if int(getattr(args, "accum_grad", 1)) != 1:
        bad.append("--accum_grad != 1 (Poisson batches are logical batches; memory is bounded by "
                   "--dp_max_physical_batch_size)")
    if getattr(args, "use_amp", False):
        bad.append("--use_amp true")
    if getattr(args, "sharded_ddp", False) or getattr(args, "distributed", False) or int(args.ngpu) > 1:
        bad.append("distributed / multi-GPU training (one process only)")
    if getattr(args, "use_adapter", False):
        bad.append("--use_adapter true")
    if getattr(args, "use_wandb", False):
        bad.append("--use_wandb true (it would send un-noised statistics of the sensitive data to a third party)")
    for init in getattr(args, "init_param", None) or []:
        model_dir = Path(str(init).split(":")[0]).parent
        if not is_public_model(model_dir):
            mech = read_privacy_info(model_dir).get("mechanism", f"none: no {model_dir / 'privacy.json'}")
            bad.append(f"--init_param {init}: only a model trained on public data only can start DP-SGD (its "
                       f"privacy.json must say mechanism {' or '.join(PUBLIC_MECHANISMS)}; it says {mech}): a model "
                       "that has seen sensitive data would compose with its own cost, which a fresh accountant "
                       "does not know")
    if getattr(args, "multiple_iterator", False):
        bad.append("--multiple_iterator true")
    if getattr(args, "iterator_type", "sequence") != "sequence":
        bad.append("--iterator_type other than sequence")
    for crit in list(args.best_model_criterion or []):
        if crit and crit[0] != "valid":
            bad.append(f"--best_model_criterion {crit} (select models on the held-out valid set only)")
    es = args.early_stopping_criterion
    if getattr(args, "patience", None) is not None and es and es[0] != "valid":
        bad.append(f"--early_stopping_criterion {es} (valid set only)")
    vs = args.val_scheduler_criterion
    if vs and vs[0] != "valid":
        bad.append(f"--val_scheduler_criterion {vs} (valid set only)")
    train_paths = {str(Path(p).resolve()) for p, _n, _t in args.train_data_path_and_name_and_type}
    valid_paths = {str(Path(p).resolve()) for p, _n, _t in args.valid_data_path_and_name_and_type}
    if train_paths & valid_paths:
        bad.append("validation data is the training data (model selection would use sensitive data)")
    if bad:
        raise ValueError("DP-SGD trainer: unsupported settings:\n  " + "\n  ".join(bad))


# ------------------------------------------------------------------------------------------------ trainer
class DPSGDTrainer(Trainer):
    """ESPnet Trainer with the DP-SGD step (see the module docstring)."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser):
        add_dp_arguments(parser)

    @classmethod
    def build_options(cls, args: argparse.Namespace) -> DPSGDTrainerOptions:
        _check_compatible(args)
        plan = plan_dp(args)  # recomputed (calibration cached): --dp_report is output only
        if plan["ledger"]:  # before any training: a model that cannot be released is not trained
            check_plan_fits(plan["ledger"], plan, data_files(args.train_data_path_and_name_and_type, plan),
                            args.output_dir)
        utt2unit = None
        if plan["unit"] == "speaker":
            utt2unit = load_units(args)[3]
        kwargs = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainerOptions)}
        return DPSGDTrainerOptions(**kwargs, dp_plan=plan, dp_utt2unit=utt2unit)

    # ------------------------------------------------------------------------------------------- run
    @classmethod
    def run(cls, model, optimizers, schedulers, train_iter_factory, valid_iter_factory,
            plot_attention_iter_factory, trainer_options, distributed_option) -> None:
        if not isinstance(trainer_options, DPSGDTrainerOptions):
            raise TypeError("DPSGDTrainer needs DPSGDTrainerOptions (build_options)")
        if distributed_option.distributed:
            raise ValueError("DP-SGD trainer: distributed training is not supported")
        if len(optimizers) != 1:
            raise ValueError("DP-SGD trainer: exactly one optimizer")
        if not isinstance(train_iter_factory, DpIterFactory):
            raise TypeError("DP-SGD trainer: the training iterator must be the DP sampler's (use the DP Task)")
        rt = DpSgdRuntime(trainer_options.dp_plan, trainer_options.dp_utt2unit)
        trainer_options.dp_runtime = rt
        p = rt.plan
        logger.info(
            "DP-SGD: unit=%s sampling=%s q=%.6g (expected %.2f units per step) steps/epoch=%d max_epoch=%d "
            "C=%g sigma=%.6g delta=%g accountant=%s; planned epsilon %.4g%s; ESPnet's grad_clip=%s is not used",
            p["unit"], p["sampling"], p["sample_rate"], p["expected_batch_units"], p["steps_per_epoch"],
            p["max_epoch"], p["clip_norm"], p["noise_multiplier"], p["delta"], p["accountant"],
            p["planned_epsilon"], f" (target {p['target_epsilon']})" if p["target_epsilon"] else "",
            trainer_options.grad_clip)
        if p["seed"] is not None:
            logger.warning("DP-SGD: --dp_seed %s fixes the sampling and the noise: reproducible experiment, "
                           "NOT for release", p["seed"])

        opt = optimizers[0]

        def _save(optimizer, state):
            state = dict(state)
            state[STATE_KEY] = rt.state_dict()
            return state

        def _load(optimizer, state):
            state = dict(state)
            dp = state.pop(STATE_KEY, None)
            if dp is None:
                raise RuntimeError("the checkpoint has no DP-SGD accountant state: it was not written by the "
                                   "DP-SGD trainer (refusing to resume and report a wrong epsilon)")
            rt.load_state_dict(dp)
            return state

        handles = [opt.register_state_dict_post_hook(_save), opt.register_load_state_dict_pre_hook(_load)]
        try:
            super().run(model=model, optimizers=optimizers, schedulers=schedulers,
                        train_iter_factory=train_iter_factory, valid_iter_factory=valid_iter_factory,
                        plot_attention_iter_factory=plot_attention_iter_factory,
                        trainer_options=trainer_options, distributed_option=distributed_option)
        finally:
            for h in handles:
                h.remove()
        cls.finalize(rt, Path(trainer_options.output_dir))

    @classmethod
    def finalize(cls, rt: DpSgdRuntime, output_dir: Path) -> Dict[str, object]:
        """The final report, released with the model (``release.release_model``)."""
        report = final_report(rt.plan, rt.accountant, rt.history)
        release_model(report, output_dir)
        logger.info("DP-SGD finished: epsilon %.4g at delta %g (%s unit, %d steps, %s); report in %s",
                    report["epsilon"], report["delta"], report["unit"], report["steps"], report["accountant"],
                    output_dir / REPORT_FILE)
        return report

    # ---------------------------------------------------------------------------------------- epoch
    @classmethod
    def train_one_epoch(cls, model, iterator, optimizers, schedulers, scaler, reporter, summary_writer,
                        options, distributed_option) -> bool:
        rt: DpSgdRuntime = options.dp_runtime
        epoch = reporter.get_epoch()
        log_interval = options.log_interval
        if log_interval is None:
            try:
                log_interval = max(len(iterator) // 20, 10)
            except TypeError:
                log_interval = 100
        device = "cuda" if options.ngpu > 0 else "cpu"
        optimizer = optimizers[0]
        scheduler = schedulers[0]

        model.train()
        rt.begin_epoch(model, epoch)
        n_steps = len(iterator) if hasattr(iterator, "__len__") else None
        all_steps_are_invalid = True
        start_time = time.perf_counter()
        for iiter, (utt_ids, batch) in enumerate(reporter.measure_iter_time(iterator, "iter_time"), 1):
            assert isinstance(batch, dict), type(batch)
            if options.no_forward_run:
                all_steps_are_invalid = False
                continue
            batch = to_device(batch, device)
            with reporter.measure_time("dp_grad_time"):
                stats = rt.step(model, utt_ids, batch)
            weight = stats.pop("batch_utts")
            reporter.register({"loss": stats.pop("loss")}, weight)
            reporter.register(stats)
            with reporter.measure_time("optim_step_time"):
                optimizer.step()  # sees exactly the noisy averaged gradient written by rt.step
                if isinstance(scheduler, AbsBatchStepScheduler):
                    scheduler.step()
            optimizer.zero_grad()
            all_steps_are_invalid = False
            reporter.register(dict({f"optim0_lr{j}": pg["lr"] for j, pg in enumerate(optimizer.param_groups)
                                    if "lr" in pg}, train_time=time.perf_counter() - start_time))
            if n_steps is not None and iiter == n_steps:
                reporter.register({"dp_epsilon": rt.epsilon(), "dp_steps": float(rt.accountant.steps)})
            start_time = time.perf_counter()
            reporter.next()
            if iiter % log_interval == 0:
                logging.info(reporter.log_message(-log_interval))
                if summary_writer is not None:
                    reporter.tensorboard_add_scalar(summary_writer, -log_interval)
                if options.use_wandb:
                    reporter.wandb_log()
        entry = rt.end_epoch(epoch)
        logging.info(f"DP-SGD after epoch {epoch}: {entry['steps']} steps, epsilon {entry['epsilon']:.4g} "
                     f"(delta {rt.plan['delta']:g}, {rt.plan['accountant']})")
        return all_steps_are_invalid
