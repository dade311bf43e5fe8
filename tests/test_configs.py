"""Configs in conf/: every fine-tune starts from the public model, so its architecture must equal the pretrain's."""
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# The shared conf/ and every corpus's own (egs2/<corpus>/pate1/conf; links into conf/ are checked there once).
CONF_DIRS = [CONF] + sorted(p for p in REPO.glob("egs2/*/pate1/conf") if p.resolve() != CONF.resolve())
ARCH_KEYS = ("frontend", "frontend_conf", "specaug", "specaug_conf", "encoder_conf", "decoder", "decoder_conf",
             "joint_network_conf")


def finetune_configs():
    # train_teacher_heads*.yaml hold training options only (the architecture is the public model's)
    return sorted(p for d in CONF_DIRS for p in d.glob("train_*.yaml")
                  if not p.is_symlink() and not p.name.startswith(("train_pretrain", "train_teacher_heads")))


def _name(p: Path) -> str:
    return str(p.relative_to(REPO))


@pytest.mark.parametrize("path", finetune_configs(), ids=_name)
def test_architecture_matches_pretrain(path):
    pretrain = path.parent / ("train_pretrain_debug.yaml" if path.stem.endswith("_debug") else "train_pretrain.yaml")
    base, conf = yaml.safe_load(pretrain.read_text()), yaml.safe_load(path.read_text())
    for key in ARCH_KEYS:
        assert conf.get(key) == base.get(key), f"{path.name}: {key} differs from {pretrain.name}"


def test_every_teacher_choice_has_both_variants():
    for part in ("full", "top", "head"):
        assert (CONF / f"train_teacher_{part}.yaml").exists() and (CONF / f"train_teacher_{part}_debug.yaml").exists()


@pytest.mark.parametrize("conf", CONF_DIRS, ids=_name)
def test_every_corpus_has_the_configs_run_sh_reads(conf):
    names = ["corpus", "train_pretrain", "train_teacher_full", "train_teacher_top", "train_teacher_head",
             "train_teacher_heads", "train_student", "train_dpsgd", "pate", "privacy", "decode_transducer"]
    missing = [n for n in names if not (conf / f"{n}.yaml").is_file()]
    assert not missing, f"{_name(conf)} lacks {missing}"


@pytest.mark.parametrize("path", finetune_configs(), ids=_name)
def test_auxiliary_ctc_matches_pretrain(path):
    # The public checkpoint holds ctc_lin when the pretrain uses auxiliary CTC: a config without it cannot load it.
    pretrain = path.parent / ("train_pretrain_debug.yaml" if path.stem.endswith("_debug") else "train_pretrain.yaml")
    weight = yaml.safe_load(pretrain.read_text())["model_conf"].get("auxiliary_ctc_weight", 0.0)
    assert weight > 0
    assert yaml.safe_load(path.read_text())["model_conf"].get("auxiliary_ctc_weight", 0.0) == weight


def test_public_model_selects_checkpoints_on_its_validation_loss():
    conf = yaml.safe_load((CONF / "train_pretrain.yaml").read_text())
    assert conf["best_model_criterion"] == [["valid", "loss", "min"]] and conf["patience"]
    run_sh = (CONF.parent / "run.sh").read_text()
    assert '"${datadir}/public_labeled" --valid "$public_valid"' in run_sh  # dev without withheld words
