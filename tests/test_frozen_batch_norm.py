"""Teachers' frozen part stays the public model's, BatchNorm running statistics included.

ESPnet's ``freeze_param`` stops gradients but, in train mode, BatchNorm would still update its running
statistics on the teacher's shard; PateASRTransducerTask.build_model freezes those under ``freeze_param``.
"""
import copy

import pytest
import torch

pytest.importorskip("espnet2")
from espnet_pate.asr.train_config import resolve_config  # noqa: E402
from espnet_pate.asr.transducer_task import PateASRTransducerTask  # noqa: E402

TOKENS = ["<blank>", "<unk>", "a", "b", "c", "d", "<sos/eos>"]


def build(config, *extra):
    parser = PateASRTransducerTask.get_parser()
    parser.set_defaults(**resolve_config(config))  # what ESPnet's --config does with one file
    args = parser.parse_args(["--output_dir", "unused", *extra])
    args.token_list = list(TOKENS)
    args.input_size = None
    torch.manual_seed(0)
    model = PateASRTransducerTask.build_model(args)
    for mod in model.modules():  # non-trivial statistics, as after public pretraining
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return model


def batch_norm_stats(model):
    return {name: (m.running_mean.clone(), m.running_var.clone()) for name, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


def train_step(model):
    g = torch.Generator().manual_seed(1)
    speech = torch.randn(3, 8000, generator=g) * 0.1
    text = torch.tensor([[2, 3, 4], [3, 5, -1], [2, -1, -1]])
    model.train()
    loss = model(speech, torch.tensor([8000, 7000, 6000]), text, torch.tensor([3, 2, 1]))[0]
    loss.backward()


def test_batch_norm_under_freeze_param_keeps_public_statistics():
    model = build("conf/train_teacher_top_debug.yaml")
    frozen_prefix = "encoder.encoders.blocks.0."
    before = batch_norm_stats(model)
    assert any(n.startswith(frozen_prefix) for n in before) and any(not n.startswith(frozen_prefix) for n in before)
    train_step(model)
    after = batch_norm_stats(model)
    for name, (mean, var) in before.items():
        unchanged = torch.equal(mean, after[name][0]) and torch.equal(var, after[name][1])
        assert unchanged == name.startswith(frozen_prefix), name


def test_frozen_batch_norm_is_the_eval_mode_function():
    model = build("conf/train_teacher_top_debug.yaml")
    name, bn = next((n, m) for n, m in model.named_modules()
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and n.startswith("encoder.encoders.blocks.0."))
    stock = torch.nn.BatchNorm1d(bn.num_features, eps=bn.eps)
    stock.load_state_dict(copy.deepcopy(bn.state_dict()))
    x = torch.randn(4, bn.num_features, 9)
    bn.train()
    stock.eval()
    torch.testing.assert_close(bn(x), stock(x))


def test_no_freeze_param_changes_nothing():
    model = build("conf/train_teacher_full_debug.yaml")
    before = batch_norm_stats(model)
    train_step(model)
    after = batch_norm_stats(model)
    assert all(not torch.equal(before[n][0], after[n][0]) for n in before)
