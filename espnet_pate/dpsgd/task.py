"""ESPnet transducer Task for DP-SGD: the project's transducer Task with the DP trainer, model and sampler.

* ``trainer = DPSGDTrainer``: its ``add_arguments`` registers the ``--dp_*`` options (command line and YAML).
* ``build_model`` applies ``make_dp_exact`` (parameter names unchanged: checkpoints decode with the stock
  ``Speech2Text``) and, when training (``main_worker`` clears ``args.dp_report``), plans the run: sampling rate,
  steps, noise calibrated to the target epsilon, into ``args.dp_report``, so config.yaml records it from the
  start.  (Built from a config.yaml, ``dp_report`` is set and nothing is planned.)
* ``build_iter_factory`` gives the training iterator of Poisson-sampled units (validation stays ESPnet's).
* Statistics collection (``--collect_stats``) is refused: statistics of sensitive data leak it; collect them on
  public data with ``espnet_pate.bin.asr_transducer_train``.
"""

from __future__ import annotations

import argparse
from typing import Optional

from espnet2.iterators.abs_iter_factory import AbsIterFactory
from espnet2.train.distributed_utils import DistributedOption

from espnet_pate.asr.transducer_task import PateASRTransducerTask
from espnet_pate.dpsgd.model_fixes import make_dp_exact
from espnet_pate.dpsgd.sampler import DpBatchSampler, DpIterFactory
from espnet_pate.dpsgd.options import dp_options
from espnet_pate.dpsgd.plan import load_units, plan_dp
from espnet_pate.dpsgd.trainer import DPSGDTrainer


class DPSGDASRTransducerTask(PateASRTransducerTask):
    trainer = DPSGDTrainer

    @classmethod
    def main_worker(cls, args: argparse.Namespace):
        if getattr(args, "collect_stats", False):
            raise ValueError("--collect_stats with the DP-SGD task: statistics of sensitive data would leak it; "
                             "collect them on public data with espnet_pate.bin.asr_transducer_train")
        args.dp_report = None  # output only; build_model plans the run (after ESPnet has set up logging)
        return super().main_worker(args)

    @classmethod
    def build_model(cls, args: argparse.Namespace):
        model = super().build_model(args)
        training = hasattr(args, "dp_clip_norm") and getattr(args, "dp_report", "from file") is None
        conv_norm = dp_options(args)["conv_norm"] if hasattr(args, "dp_clip_norm") else "frozen_batch_norm"
        make_dp_exact(model, conv_norm=conv_norm)
        if training:  # main_worker: plan now so that config.yaml (written next) records it
            args.dp_report = dict(plan_dp(args), status="planned")
        return model

    @classmethod
    def build_iter_factory(
        cls,
        args: argparse.Namespace,
        distributed_option: DistributedOption,
        mode: str,
        kwargs: Optional[dict] = None,
    ) -> AbsIterFactory:
        if mode != "train":
            return super().build_iter_factory(args=args, distributed_option=distributed_option, mode=mode,
                                              kwargs=kwargs)
        if getattr(args, "multiple_iterator", False) or args.iterator_type != "sequence":
            raise ValueError("DP-SGD: only iterator_type=sequence without multiple_iterator is supported")
        opts = dp_options(args)
        plan = plan_dp(args)
        keys, unit_ids, unit_keys, _ = load_units(args, opts)
        iter_options = cls.build_iter_options(args, distributed_option, mode)
        if kwargs:
            for k, v in kwargs.items():
                setattr(iter_options, k, v)
        dataset = cls.build_dataset(args, iter_options, set(keys))
        sampler = DpBatchSampler(len(unit_ids), plan["sample_rate"], plan["steps_per_epoch"],
                                 sampling=plan["sampling"], seed=plan["seed"])
        return DpIterFactory(dataset, unit_ids, unit_keys, sampler, collate_fn=iter_options.collate_fn,
                             num_workers=args.num_workers, pin_memory=args.ngpu > 0)
