"""Exact per-example gradients on ESPnet's transducer model (DP-SGD), clipping, speaker units, noise.

An example's clipped gradient must be the same alone and inside any padded batch (../shared/PRIVACY.md,
"DP-SGD").  The stock espnet 202511 model fails this (truncated encoder mask, BatchNorm, frontend padding):
asserted below so the test keeps its teeth.  Tiny models: the first ``import espnet2`` costs 15-20 s.
"""

import copy
import math

import pytest
import torch

espnet2 = pytest.importorskip("espnet2")
from espnet2.asr_transducer.encoder.blocks.conv_input import ConvInput  # noqa: E402
from espnet2.tasks.asr_transducer import ASRTransducerTask  # noqa: E402

from espnet_pate.asr.rnnt_loss import RNNTLoss, rnnt_loss_logspace  # noqa: E402
from espnet_pate.dpsgd.model_fixes import make_dp_exact, subsampled_lengths  # noqa: E402
from espnet_pate.dpsgd.per_example import (  # noqa: E402
    PerExampleGradients,
    add_noise,
    clip_and_sum,
    make_noise_generator,
)

VOCAB = ["<blank>", "<unk>"] + list("abcdefg") + ["<sos/eos>"]
REL = 1e-4


def tiny_args(dropout=0.0, ctc_weight=0.0):
    args = ASRTransducerTask.get_parser().parse_args([])
    args.token_list = list(VOCAB)
    args.input_size = None
    args.frontend = "default"
    args.frontend_conf = {"n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 40}
    args.specaug = None
    args.specaug_conf = {}
    args.normalize = None
    args.normalize_conf = {}
    args.encoder_conf = {
        "main_conf": {"pos_wise_act_type": "swish", "conv_mod_act_type": "swish"},
        "input_conf": {"vgg_like": False, "conv_size": 8, "subsampling_factor": 4, "output_size": 32},
        "body_conf": [{"block_type": "conformer", "hidden_size": 32, "linear_size": 64, "heads": 2,
                       "conv_mod_kernel_size": 5, "num_blocks": 2, "dropout_rate": dropout}],
    }
    args.decoder = "rnn"
    args.decoder_conf = {"embed_size": 16, "hidden_size": 16, "num_layers": 1}
    args.joint_network_conf = {"joint_space_size": 24}
    args.model_conf = {"auxiliary_ctc_weight": ctc_weight} if ctc_weight else {}
    return args


def build_tiny(seed=0, dropout=0.0, ctc_weight=0.0):
    torch.manual_seed(seed)
    model = ASRTransducerTask.build_model(tiny_args(dropout, ctc_weight))
    # non-trivial BatchNorm statistics, as after (public) pretraining
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    model.train()
    return model


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([12000, 5200, 8800, 3100])  # mixed lengths, longest first and in the middle
    speech = torch.randn(4, int(lens.max()), generator=g) * 0.1
    for i, n in enumerate(lens):
        speech[i, n:] = 0.0
    tlens = torch.tensor([6, 2, 4, 1])
    text = torch.full((4, int(tlens.max())), -1, dtype=torch.long)
    for i, n in enumerate(tlens):
        text[i, :n] = torch.randint(2, len(VOCAB) - 1, (int(n),), generator=g)
    return speech, lens, text, tlens


class _RecordingLoss(torch.nn.Module):
    """criterion_transducer that keeps the per-example losses of the last call (sum is returned)."""

    def __init__(self):
        super().__init__()
        self.inner = RNNTLoss(blank_id=0, reduction="none")
        self.last = None

    def forward(self, *args):
        self.last = self.inner(*args)
        return self.last.sum()


def _release(model):
    for mod in model.modules():  # ESPnet's attention caches its last weights (graph tensors)
        if torch.is_tensor(getattr(mod, "attn", None)):
            mod.attn = None


def _flat(grads, names):
    return torch.cat([grads[n].reshape(-1) for n in names])


def grads_alone(model, speech, lens, text, tlens):
    """Each example's gradient from the model's own forward with that example ALONE (no padding)."""
    model.criterion_transducer = RNNTLoss(blank_id=0)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    out = []
    for i in range(speech.size(0)):
        n, u = int(lens[i]), int(tlens[i])
        loss, _, _ = model(speech[i : i + 1, :n], lens[i : i + 1], text[i : i + 1, :u], tlens[i : i + 1])
        gs = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        out.append({k: (g if g is not None else torch.zeros_like(p)) for (k, p), g in zip(params.items(), gs)})
    _release(model)
    return out


def grads_in_padded_batch(model, speech, lens, text, tlens):
    """Each example's gradient inside ONE padded batch forward of the model (d loss_i / d theta)."""
    model.criterion_transducer = _RecordingLoss()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    model(speech, lens, text, tlens)
    losses = model.criterion_transducer.last
    out = []
    for i in range(speech.size(0)):
        gs = torch.autograd.grad(losses[i], list(params.values()), retain_graph=True, allow_unused=True)
        out.append({k: (g if g is not None else torch.zeros_like(p)) for (k, p), g in zip(params.items(), gs)})
    model.criterion_transducer = RNNTLoss(blank_id=0)
    _release(model)
    return out


def max_rel_diff(a_list, b_list):
    names = list(a_list[0])
    return max(float((_flat(a, names) - _flat(b, names)).norm() / _flat(b, names).norm())
               for a, b in zip(a_list, b_list))


def clip(g, c):
    names = list(g)
    norm = float(_flat(g, names).norm())
    f = min(1.0, c / (norm + 1e-6))
    return {n: v * f for n, v in g.items()}


@pytest.fixture(scope="module")
def stock_model():
    return build_tiny()


@pytest.fixture(scope="module")
def fixed_model(stock_model):
    return make_dp_exact(copy.deepcopy(stock_model))


@pytest.fixture(scope="module")
def batch():
    return make_batch()


@pytest.fixture(scope="module")
def alone(fixed_model, batch):
    return grads_alone(fixed_model, *batch)


@pytest.fixture(scope="module")
def ctc_model():
    """The recipe's configs add ESPnet's auxiliary CTC loss (weight 0.3) on the encoder output."""
    return make_dp_exact(build_tiny(ctc_weight=0.3))


@pytest.fixture(scope="module")
def ctc_alone(ctc_model, batch):
    return grads_alone(ctc_model, *batch)  # ESPnet's own forward: transducer + 0.3 * torch's ctc_loss


# --------------------------------------------------------------------------------------------- teeth
def test_stock_model_mixes_examples(stock_model, batch):
    """The unfixed stock model: an example's gradient in a padded batch differs from its gradient alone."""
    m = copy.deepcopy(stock_model)
    in_batch = grads_in_padded_batch(m, *batch)
    ref = grads_alone(m, *batch)
    assert max_rel_diff(in_batch, ref) > 1e-2  # observed 0.5 - 4 (mask truncation, BatchNorm, frontend)


def test_stock_conv_input_truncates_mask():
    """The root cause in espnet 202511: ConvInput truncates the mask; subsampled_lengths gives the true lengths."""
    torch.manual_seed(0)
    ci = ConvInput(40, 8, subsampling_factor=4, vgg_like=False, output_size=16)
    lens = torch.tensor([400, 150, 60])
    mask = torch.arange(400)[None] >= lens[:, None]
    _, stock_mask = ci(torch.randn(3, 400, 40), mask)
    true = subsampled_lengths(ci, lens)
    assert (~stock_mask).sum(-1).tolist() != true.tolist()
    assert true.tolist() == [ci(torch.randn(1, int(n), 40))[0].size(1) for n in lens]


# ------------------------------------------------------------------------------------- exactness
def test_fixed_model_padded_batch_equals_alone(fixed_model, batch, alone):
    in_batch = grads_in_padded_batch(fixed_model, *batch)
    assert max_rel_diff(in_batch, alone) < REL


LOSSES = pytest.mark.parametrize("loss", ["rnnt", "rnnt+ctc"])


def model_and_alone(request, loss):
    """The fixed model and its examples' gradients alone, without or with ESPnet's auxiliary CTC loss."""
    if loss == "rnnt":
        return request.getfixturevalue("fixed_model"), request.getfixturevalue("alone")
    return request.getfixturevalue("ctc_model"), request.getfixturevalue("ctc_alone")


@LOSSES
@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_engine_per_example_grads_equal_alone(request, batch, method, loss):
    model, alone = model_and_alone(request, loss)
    eng = PerExampleGradients(model, method=method)
    per, losses = eng.per_example_grads(*batch)
    got = [{n: g[i] for n, g in per.items()} for i in range(batch[0].size(0))]
    assert max_rel_diff(got, alone) < REL
    assert torch.isfinite(losses).all() and losses.shape == (4,)
    if loss == "rnnt+ctc":  # teeth: the CTC term is in there (ctc_lin learns from it alone)
        assert all(float(g["ctc_lin.weight"].norm()) > 0 for g in alone)
        assert all(float(per["ctc_lin.weight"][i].norm()) > 0 for i in range(batch[0].size(0)))


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_clipped_sum_equals_sum_of_clipped_alone(fixed_model, batch, alone, method):
    C = 0.5 * min(float(_flat(g, list(g)).norm()) for g in alone)  # every example is clipped
    C = max(C, 1e-3)
    eng = PerExampleGradients(fixed_model, method=method)
    total, stats = eng.clipped_grad_sum(*batch, clip_norm=C)
    names = list(total)
    expect = sum(_flat(clip(g, C), names) for g in alone)
    assert float((_flat(total, names) - expect).norm() / expect.norm()) < REL
    assert stats.num_units == 4 and bool((stats.factors < 1).all())
    # each clipped contribution has norm <= C
    assert bool((stats.norms * stats.factors <= C * (1 + 1e-5)).all())


@LOSSES
def test_each_example_any_batch_composition(request, batch, loss):
    """Same example, other padded batches (reordered, subset, duplicated longest): same clipped gradient."""
    model, alone = model_and_alone(request, loss)
    speech, lens, text, tlens = batch
    eng = PerExampleGradients(model, method="vmap")
    C = 1.0
    for order in ([3, 1], [2, 0, 3], [3, 0, 0, 1]):
        idx = torch.tensor(order)
        sl = lens[idx]
        per, _ = eng.per_example_grads(speech[idx][:, : int(sl.max())], sl, text[idx], tlens[idx])
        for j, i in enumerate(order):
            got = clip({n: g[j] for n, g in per.items()}, C)
            assert max_rel_diff([got], [clip(alone[i], C)]) < REL


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_speaker_units_clip_sum_of_speaker_grads(fixed_model, batch, alone, method):
    groups = ["spkA", "spkB", "spkA", "spkC"]
    C = 0.05
    eng = PerExampleGradients(fixed_model, method=method)
    total, stats = eng.clipped_grad_sum(*batch, clip_norm=C, group_ids=groups)
    names = list(total)
    units = {}
    for g, spk in zip(alone, groups):
        units[spk] = g if spk not in units else {n: units[spk][n] + g[n] for n in g}
    expect = sum(_flat(clip(u, C), names) for u in units.values())
    assert stats.num_units == 3
    assert float((_flat(total, names) - expect).norm() / expect.norm()) < REL


def test_empty_batch_gives_zero_sum(fixed_model):
    eng = PerExampleGradients(fixed_model)
    total, stats = eng.clipped_grad_sum(torch.zeros(0, 100), torch.zeros(0, dtype=torch.long),
                                        torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, dtype=torch.long), clip_norm=1.0)
    assert stats.num_units == 0 and all(float(v.abs().sum()) == 0 for v in total.values())


def test_too_short_example_is_refused(fixed_model, batch):
    speech, lens, text, tlens = batch
    lens = lens.clone()
    lens[3] = 600  # 4 frames: nothing left after subsampling by 4
    with pytest.raises(ValueError, match="too short"):
        PerExampleGradients(fixed_model).per_example_grads(speech, lens, text, tlens)


def test_engine_refuses_unfixed_model(stock_model):
    with pytest.raises(ValueError):
        PerExampleGradients(stock_model)


# ----------------------------------------------------------------------------------------- noise
def _standard_normal_checks(z):
    from scipy import stats as st

    n = z.numel()
    z = z.double().numpy()
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.std() - 1) < 5 * math.sqrt(0.5 / n)
    assert st.kstest(z, "norm").pvalue > 1e-3


def test_noise_distribution_over_coordinates(fixed_model, batch):
    """(update * E - sum_clipped) / (sigma C) over all coordinates is N(0, 1); fixed seed reproduces it."""
    C, sigma, E = 0.3, 1.7, 6.0
    eng = PerExampleGradients(fixed_model, method="vmap")
    total, _ = eng.clipped_grad_sum(*batch, clip_norm=C)
    names = list(total)
    noisy, _ = eng.noisy_grad(*batch, clip_norm=C, noise_multiplier=sigma, expected_batch_size=E,
                              generator=make_noise_generator(1234))
    z = (_flat(noisy, names) * E - _flat(total, names)) / (sigma * C)
    assert z.numel() > 10000
    _standard_normal_checks(z)
    again, _ = eng.noisy_grad(*batch, clip_norm=C, noise_multiplier=sigma, expected_batch_size=E,
                              generator=make_noise_generator(1234))
    assert torch.equal(_flat(again, names), _flat(noisy, names))


def test_noise_only_for_zero_gradients_and_os_seeding():
    shapes = {"a": (300, 40), "b": (5000,)}
    zero = {n: torch.zeros(s) for n, s in shapes.items()}
    C, sigma, E = 2.0, 0.8, 10.0
    out = add_noise(zero, C, sigma, E, make_noise_generator(7))
    z = torch.cat([v.flatten() for v in out.values()]) * E / (sigma * C)
    _standard_normal_checks(z)
    # unseeded generators are seeded from the OS: two of them differ
    o1 = add_noise(zero, C, sigma, E, make_noise_generator())
    o2 = add_noise(zero, C, sigma, E, make_noise_generator())
    assert not torch.equal(o1["a"], o2["a"])
    # sigma = 0: no noise, just the scaling
    g = {"a": torch.ones(3)}
    assert torch.equal(add_noise(g, C, 0.0, 4.0)["a"], torch.full((3,), 0.25))


def test_clip_and_sum_norms():
    g = {"w": torch.tensor([[3.0, 0.0], [0.3, 0.4], [0.0, 0.0]]), "b": torch.tensor([4.0, 0.0, 0.0])}
    total, norms, factors = clip_and_sum(g, 1.0)
    assert norms.tolist() == pytest.approx([5.0, 0.5, 0.0])
    assert factors.tolist() == pytest.approx([1 / (5 + 1e-6), 1.0, 1.0])
    assert total["w"].tolist() == pytest.approx([0.6 + 0.3, 0.4], rel=1e-5)
    assert float(total["b"]) == pytest.approx(0.8, rel=1e-5)


def test_dp_step_grads_writes_param_grads(fixed_model, batch):
    m = copy.deepcopy(fixed_model)  # the engine drops ESPnet's cached attention tensors, so a used model copies
    eng = PerExampleGradients(m)
    stats = eng.dp_step_grads(*batch, clip_norm=1.0, noise_multiplier=1.0, expected_batch_size=4.0,
                              generator=make_noise_generator(0))
    assert all(p.grad is not None and p.grad.shape == p.shape for p in m.parameters() if p.requires_grad)
    assert stats.num_units == 4 and 0.0 <= stats.clipped_fraction <= 1.0


# -------------------------------------------------------------------- checkpoint compatibility
def test_state_dict_keys_unchanged_and_stock_decoding_identical(stock_model, fixed_model):
    """make_dp_exact keeps every key, and in eval mode on one utterance the stock model loaded from the fixed
    model's state_dict computes the same encoder output (what stock Speech2Text does)."""
    assert list(stock_model.state_dict()) == list(fixed_model.state_dict())
    stock = build_tiny(seed=5)
    stock.load_state_dict(fixed_model.state_dict(), strict=True)
    stock.eval()
    fixed_model.eval()
    try:
        x = torch.randn(1, 7000) * 0.1
        xl = torch.tensor([7000])
        with torch.no_grad():
            a, al = stock.encode(x, xl)
            b, bl = fixed_model.encode(x, xl)
        assert torch.equal(al, bl)
        assert torch.allclose(a, b, atol=1e-5)
    finally:
        fixed_model.train()


def test_layer_norm_option_changes_keys(stock_model):
    m = make_dp_exact(copy.deepcopy(stock_model), conv_norm="layer_norm")
    keys = set(m.state_dict())
    assert not any(k.endswith("conv_mod.norm.running_mean") for k in keys)  # stock Speech2Text cannot use it
    assert m._dp_exact["layer_norm"]


def test_make_dp_exact_rejects_dynamic_chunks(stock_model):
    m = copy.deepcopy(stock_model)
    m.encoder.dynamic_chunk_training = True
    with pytest.raises(ValueError):
        make_dp_exact(m)


# ------------------------------------------------------------------------------ conv input / loss
@pytest.mark.parametrize("vgg,sub", [(False, 4), (False, 6), (False, 2), (True, 4), (True, 2)])
def test_conv_input_padded_equals_alone(vgg, sub):
    torch.manual_seed(0)
    ci = ConvInput(40, (4, 4) if vgg else 4, subsampling_factor=sub, vgg_like=vgg, output_size=8)
    make_dp_exact_conv = copy.deepcopy(ci)
    from espnet_pate.dpsgd.model_fixes import _ExactConvInputMixin, _swap_class

    _swap_class(make_dp_exact_conv, _ExactConvInputMixin, "conv_input")
    lens = torch.tensor([97, 40, 23, 64])
    x = torch.randn(4, 97, 40)
    mask = torch.arange(97)[None] >= lens[:, None]
    y, ymask = make_dp_exact_conv(x, mask)
    for i, n in enumerate(lens.tolist()):
        yi, _ = ci(x[i : i + 1, :n])
        t = yi.size(1)
        assert int((~ymask[i]).sum()) == t
        assert torch.allclose(y[i, :t], yi[0], atol=1e-5)


def test_rnnt_loss_backends_agree_and_vmap():
    torch.manual_seed(0)
    B, T, U, V = 3, 12, 5, 7
    logits = torch.randn(B, T, U + 1, V, requires_grad=True)
    tgt = torch.randint(1, V, (B, U), dtype=torch.int32)
    tl = torch.tensor([12, 7, 9], dtype=torch.int32)
    ul = torch.tensor([5, 2, 4], dtype=torch.int32)
    for red in ("none", "mean", "sum"):
        a = RNNTLoss(0, red)(logits, tgt, tl, ul)
        b = RNNTLoss(0, red, backend="torch")(logits, tgt, tl, ul)
        assert torch.allclose(a, b, rtol=1e-5)
    mean = RNNTLoss(0, "mean")(logits, tgt, tl, ul)
    assert torch.allclose(mean, RNNTLoss(0, "none")(logits, tgt, tl, ul).sum() / B)  # warprnnt's "mean"
    ga = torch.autograd.grad(RNNTLoss(0, "sum")(logits, tgt, tl, ul), logits)[0]
    gb = torch.autograd.grad(RNNTLoss(0, "sum", backend="torch")(logits, tgt, tl, ul), logits)[0]
    assert torch.allclose(ga, gb, atol=1e-5)
    from torch.func import grad, vmap

    f = lambda x, t, a, b: rnnt_loss_logspace(x[None], t[None], a[None], b[None], reduction="sum")  # noqa: E731
    gv = vmap(grad(f))(logits.detach(), tgt, tl, ul)
    assert torch.allclose(gv, ga, atol=1e-5)
    # longer padding does not change an example's loss
    big = torch.nn.functional.pad(logits.detach(), (0, 0, 0, 3, 0, 4))
    tgt_big = torch.nn.functional.pad(tgt, (0, 3))
    assert torch.allclose(rnnt_loss_logspace(big, tgt_big, tl, ul, reduction="none"),
                          rnnt_loss_logspace(logits.detach(), tgt, tl, ul, reduction="none"), rtol=1e-6)


def test_stock_speech2text_decodes_dp_checkpoint(tmp_path, batch):
    """A checkpoint of a fixed model trained a few DP steps loads in the stock Speech2Text, whose encoder then
    computes exactly what the fixed model computes (and the same hypotheses)."""
    from espnet2.bin.asr_transducer_inference import Speech2Text
    from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

    m = make_dp_exact(build_tiny(seed=3))
    eng = PerExampleGradients(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(2):
        eng.dp_step_grads(*batch, clip_norm=1.0, noise_multiplier=0.1, expected_batch_size=4.0,
                          generator=make_noise_generator(0))
        opt.step()
    torch.save(m.state_dict(), tmp_path / "model.pth")
    with open(tmp_path / "config.yaml", "w") as f:
        yaml_no_alias_safe_dump(vars(tiny_args()), f, indent=4, sort_keys=False)
    s2t = Speech2Text(str(tmp_path / "config.yaml"), str(tmp_path / "model.pth"), beam_size=2)
    assert not hasattr(s2t.asr_model, "_dp_exact")  # the stock model
    m.eval()
    speech, lens = batch[0], batch[1]
    x = speech[0, : int(lens[0])]
    with torch.no_grad():
        e_stock, _ = s2t.asr_model.encoder(*s2t.asr_model._extract_feats(x[None], lens[:1]))
        e_dp, _ = m.encoder(*m._extract_feats(x[None], lens[:1]))
        hyps_stock = [h.yseq for h in s2t(x)]
        make_dp_exact(s2t.asr_model)
        hyps_dp = [h.yseq for h in s2t(x)]
    assert torch.allclose(e_stock, e_dp, atol=1e-6)
    assert hyps_stock == hyps_dp
