"""TeacherEnsemble: the shared prefix is detected and runs once, identical tensors are not copied, and every
teacher's encoder, decoder and joint scores equal ESPnet's own modules (a per-teacher reference loop)."""

import numpy as np
import pytest
import torch

pytest.importorskip("espnet2")

from espnet_pate.ensemble.teachers import TeacherEnsemble  # noqa: E402
from espnet_pate.ensemble.toy import (  # noqa: E402
    HEAD_TRAINABLE,
    TOP_TRAINABLE,
    build_toy_model,
    perturbed_copy,
    reference_encoder,
    toy_utterances,
)

ATOL = 2e-5


@pytest.fixture(scope="module")
def base():
    return build_toy_model(seed=0)


@pytest.fixture(scope="module")
def speech():
    return [w for w, _, _ in toy_utterances(3, seed=5).values()]


def teachers(base, k=3, trainable=TOP_TRAINABLE, scale=0.1):
    return [perturbed_copy(base, seed=10 + i, scale=scale, trainable=trainable) for i in range(k)]


@pytest.mark.parametrize("trainable, shared", [
    (TOP_TRAINABLE, ["encoder.embed", "encoder.encoders.blocks.0"]),
    (HEAD_TRAINABLE, ["encoder.embed", "encoder.encoders.blocks.0", "encoder.encoders.blocks.1",
                      "encoder.encoders.norm_blocks"]),
    (("encoder", "decoder", "joint_network"), []),
])
def test_shared_prefix_and_encoder_equal_each_teacher(base, speech, trainable, shared):
    models = teachers(base, trainable=trainable)
    ens = TeacherEnsemble(iter(models))
    assert [s.name for s in ens.shared_stages] == shared
    assert [s.name for s in ens.stages] == [s.name for s in ens.shared_stages + ens.teacher_stages]
    batch = ens.encode_batch(speech)  # padded together after the input block
    for wave, enc_b in zip(speech, batch):
        enc = ens.encode(wave)
        assert enc.shape[0] == 3 and enc_b.shape == enc.shape
        for k, m in enumerate(models):
            ref = reference_encoder(m, wave)
            torch.testing.assert_close(enc[k], ref, atol=ATOL, rtol=0)
            torch.testing.assert_close(enc_b[k], ref, atol=ATOL, rtol=0)


def test_identical_tensors_are_shared_not_copied(base):
    models = teachers(base, k=4)
    ens = TeacherEnsemble(iter(models))
    # the embedding of the decoder was perturbed; the input block was not: a stride-0 view of teacher 0's
    w = ens._stage_weights  # teacher-specific stages only
    assert "encoder.encoders.blocks.0" not in w
    rep = ens.memory_report()
    assert rep["total_bytes"] < rep["k_full_models_bytes"]
    frozen = [k for k, same in ens.identical.items() if same]
    assert any(k.startswith("encoder.embed") for k in frozen)
    assert not any(k.startswith("decoder.") for k in frozen)
    # shared tensors are expanded views (stride 0 along the teacher axis) of teacher 0's storage
    expanded = TeacherEnsemble(iter([models[0], perturbed_copy(models[0], 1, trainable=("joint_network.lin_out",))]))
    emb = expanded.decoder.embed
    assert emb.stride(0) == 0 and emb.data_ptr() == models[0].decoder.embed.weight.data_ptr()


def test_frozen_block_with_drifted_batchnorm_stats_is_not_shared(base):
    """A 'frozen' block trained in train mode updates its BatchNorm statistics: then it is teacher-specific."""
    models = teachers(base, k=2)
    with torch.no_grad():
        models[1].encoder.encoders.blocks[0].conv_mod.norm.running_mean.add_(0.01)
    ens = TeacherEnsemble(iter(models))
    assert [s.name for s in ens.shared_stages] == ["encoder.embed"]


def test_too_short_utterances_are_marked(base, speech):
    ens = TeacherEnsemble(iter(teachers(base, k=2)))
    out = ens.encode_batch([speech[0], np.zeros(400, dtype=np.float32), speech[1]])
    assert out[1] is None and out[0].shape[0] == 2 and out[2].shape[0] == 2
    torch.testing.assert_close(out[2], ens.encode(speech[1]), atol=ATOL, rtol=0)


def test_other_architecture_is_refused(base):
    other = build_toy_model(seed=1)
    other.decoder.embed = torch.nn.Embedding(other.decoder.embed.num_embeddings, 16 + 1)
    with pytest.raises(ValueError, match="shape|architecture"):
        TeacherEnsemble(iter([base, other]))


def test_decoder_and_joint_equal_espnet_modules(base, speech):
    models = teachers(base)
    ens = TeacherEnsemble(iter(models))
    enc = ens.encode(speech[0])
    labels = [0, 5, 3, 7]  # a prefix: blank (start), then tokens
    state = ens.decoder.init_state(1)
    for i, y in enumerate(labels):
        out, state = ens.decoder.step(torch.tensor([y]), state)
        logits = ens.joint.logits(ens.joint.project_encoder(enc[:, i:i + 1]), ens.joint.project_decoder(out))
        for k, m in enumerate(models):
            with torch.no_grad():
                dec_state = m.decoder.init_state(1)
                for j in range(i + 1):
                    emb = m.decoder.embed(torch.tensor([[labels[j]]]))
                    ref_out, dec_state = m.decoder.rnn_forward(emb, dec_state)
                ref = m.joint_network(enc[k, i:i + 1], ref_out[0])
            torch.testing.assert_close(out[k, 0], ref_out[0, 0], atol=ATOL, rtol=0)
            torch.testing.assert_close(logits[k, 0], ref[0], atol=ATOL, rtol=0)
    # a whole sequence at once (utterance-level scoring) gives the same outputs
    seq = ens.decoder.sequence(torch.tensor([labels]))
    assert seq.shape[:3] == (3, 1, len(labels))
    np.testing.assert_allclose(seq[:, 0, -1].numpy(), out[:, 0].numpy(), atol=ATOL)
