"""espnet_pate.asr.ctc_loss: the vmap-able CTC loss equals torch's, example by example, padding ignored."""
import torch
from torch.func import grad, vmap

from espnet_pate.asr.ctc_loss import ctc_loss_logspace


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    T, V = 12, 6
    logits = torch.randn(4, T, V, generator=g, dtype=torch.float64)
    in_lens = torch.tensor([12, 7, 9, 2])
    targets = torch.tensor([[2, 2, 3, 4], [5, 1, 0, 0], [3, 0, 0, 0], [1, 2, 3, 0]])  # repeats; last infeasible
    tlens = torch.tensor([4, 2, 1, 3])
    return logits, in_lens, targets, tlens


def torch_ctc(logits, in_lens, targets, tlens):
    lp = torch.log_softmax(logits, -1).transpose(0, 1)
    return torch.nn.functional.ctc_loss(lp, targets, in_lens, tlens, reduction="none", zero_infinity=True)


def test_equals_torch_ctc_loss_and_its_gradient():
    logits, in_lens, targets, tlens = batch()
    logits.requires_grad_(True)
    ours = ctc_loss_logspace(torch.log_softmax(logits, -1), targets, in_lens, tlens)
    ref = torch_ctc(logits, in_lens, targets, tlens)
    assert torch.allclose(ours, ref, atol=1e-9) and float(ref[3].detach()) == 0.0  # too few frames: zeroed
    g_ours, = torch.autograd.grad(ours.sum(), logits)
    g_ref, = torch.autograd.grad(ref.sum(), logits)
    assert torch.isfinite(g_ours).all() and torch.allclose(g_ours, g_ref, atol=1e-9)
    assert float(g_ours[1, 7:].abs().max()) == 0.0  # padded frames get no gradient


def test_per_example_under_vmap_equals_alone():
    logits, in_lens, targets, tlens = batch(1)

    def loss_one(lg, n, tg, u):
        return ctc_loss_logspace(torch.log_softmax(lg, -1).unsqueeze(0), tg.unsqueeze(0), n.view(1), u.view(1))[0]

    per = vmap(grad(loss_one), in_dims=(0, 0, 0, 0))(logits, in_lens, targets, tlens)
    for i in range(3):
        n, u = int(in_lens[i]), int(tlens[i])
        alone = grad(loss_one)(logits[i, :n], in_lens[i], targets[i, :u], tlens[i])
        assert torch.allclose(per[i, :n], alone, atol=1e-10) and float(per[i, n:].abs().sum()) == 0.0
