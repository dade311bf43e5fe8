"""Configs in conf/: every fine-tune starts from the public model, so its architecture must equal the pretrain's."""
from pathlib import Path

import pytest
import yaml

CONF = Path(__file__).resolve().parents[1] / "conf"
ARCH_KEYS = ("frontend", "frontend_conf", "encoder_conf", "decoder", "decoder_conf", "joint_network_conf")


def finetune_configs():
    # train_teacher_heads*.yaml hold training options only (the architecture is the public model's)
    return sorted(p for p in CONF.glob("train_*.yaml") if not p.name.startswith(("train_pretrain", "train_teacher_heads")))


@pytest.mark.parametrize("path", finetune_configs(), ids=lambda p: p.name)
def test_architecture_matches_pretrain(path):
    pretrain = CONF / ("train_pretrain_debug.yaml" if path.stem.endswith("_debug") else "train_pretrain.yaml")
    base, conf = yaml.safe_load(pretrain.read_text()), yaml.safe_load(path.read_text())
    for key in ARCH_KEYS:
        assert conf.get(key) == base.get(key), f"{path.name}: {key} differs from {pretrain.name}"


def test_every_teacher_choice_has_both_variants():
    for part in ("full", "top", "head"):
        assert (CONF / f"train_teacher_{part}.yaml").exists() and (CONF / f"train_teacher_{part}_debug.yaml").exists()


@pytest.mark.parametrize("path", finetune_configs(), ids=lambda p: p.name)
def test_auxiliary_ctc_matches_pretrain(path):
    # The public checkpoint holds ctc_lin when the pretrain uses auxiliary CTC: a config without it cannot load it.
    pretrain = CONF / ("train_pretrain_debug.yaml" if path.stem.endswith("_debug") else "train_pretrain.yaml")
    weight = yaml.safe_load(pretrain.read_text())["model_conf"].get("auxiliary_ctc_weight", 0.0)
    assert weight > 0
    assert yaml.safe_load(path.read_text())["model_conf"].get("auxiliary_ctc_weight", 0.0) == weight


def test_public_model_selects_checkpoints_on_its_validation_loss():
    conf = yaml.safe_load((CONF / "train_pretrain.yaml").read_text())
    assert conf["best_model_criterion"] == [["valid", "loss", "min"]] and conf["patience"]
    run_sh = (CONF.parent / "run.sh").read_text()
    assert '"${datadir}/public_labeled" --valid "$public_valid"' in run_sh  # dev without withheld words
