"""Configs in conf/ and in every corpus's egs2/<corpus>/pate1/conf: one model config (model.yaml, model_debug.yaml)
and per-role files on top of it.

Every fine-tune starts from the public model's checkpoint, so a role file must not set the architecture: it
names the model config as its base_config and holds its role's options only.
"""
from pathlib import Path

import pytest
import yaml

from espnet_pate.asr.train_config import ARCHITECTURE_KEYS, BASE_KEY, resolve_config
from espnet_pate.bin.resolve_config import main as resolve_main

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# The shared conf/ and every corpus's own (egs2/<corpus>/pate1/conf; links into conf/ are checked there once).
CONF_DIRS = [CONF] + sorted(p for p in REPO.glob("egs2/*/pate1/conf") if p.resolve() != CONF.resolve())
MODEL_KEYS = ARCHITECTURE_KEYS + ("specaug", "specaug_conf", "model_conf")


def _name(p: Path) -> str:
    return str(p.relative_to(REPO))


def model_config_of(path: Path) -> Path:
    return path.parent / ("model_debug.yaml" if path.stem.endswith("_debug") else "model.yaml")


def role_configs():
    return sorted(p for d in CONF_DIRS for p in d.glob("train_*.yaml") if not p.is_symlink())


def espnet_role_configs():
    # train_teacher_heads*.yaml also hold options of the joint head trainer, which ESPnet's parser does not know
    return [p for p in role_configs() if not p.name.startswith("train_teacher_heads")]


def base_chain_end(path: Path) -> Path:
    """The last file of ``path``'s base_config chain (a role may extend another role, e.g. train_nonprivate)."""
    while True:
        raw = yaml.safe_load(path.read_text())
        if BASE_KEY not in raw:
            return path
        path = path.parent / raw[BASE_KEY]


def heads_configs():
    return sorted(p for d in CONF_DIRS for p in d.glob("train_teacher_heads*.yaml") if not p.is_symlink())


def model_configs():
    return sorted(p for d in CONF_DIRS for p in d.glob("model*.yaml") if not p.is_symlink())


@pytest.mark.parametrize("path", role_configs(), ids=_name)
def test_role_configs_extend_the_model_config_and_set_no_architecture(path):
    raw = yaml.safe_load(path.read_text())
    assert base_chain_end(path).name == model_config_of(path).name
    assert not set(raw) & set(MODEL_KEYS), f"{path.name} sets part of the model"
    resolved, model = resolve_config(path), resolve_config(model_config_of(path))
    for key in MODEL_KEYS:
        assert resolved.get(key) == model.get(key)


@pytest.mark.parametrize("path", heads_configs(), ids=_name)
def test_heads_configs_extend_the_espnet_teacher_config(path):
    from espnet_pate.ensemble.joint_heads_train import load_train_config

    raw = yaml.safe_load(path.read_text())
    assert raw[BASE_KEY] == path.name.replace("train_teacher_heads", "train_teacher_head")
    assert not set(raw) & set(MODEL_KEYS), f"{path.name} sets part of the model"
    load_train_config(path)  # options the joint trainer does not support raise


def test_every_teacher_choice_has_both_variants():
    for part in ("full", "top", "head", "heads"):
        assert (CONF / f"train_teacher_{part}.yaml").exists() and (CONF / f"train_teacher_{part}_debug.yaml").exists()


@pytest.mark.parametrize("conf", CONF_DIRS, ids=_name)
def test_every_corpus_has_the_configs_run_sh_reads(conf):
    # run.sh reads ${conf_dir}/<name>${sfx}.yaml; a corpus with a model_debug.yaml also runs with --debug true
    names = ["corpus", "model", "train_pretrain", "train_teacher_full", "train_teacher_top", "train_teacher_head",
             "train_teacher_heads", "train_student", "train_nonprivate", "train_dpsgd", "train_dpsgd_head", "pate",
             "privacy", "audit_inversion"]
    suffixes = ["", "_debug"] if (conf / "model_debug.yaml").exists() else [""]
    missing = [n + s for n in names for s in suffixes if not (conf / f"{n}{s}.yaml").is_file()]
    missing += [] if (conf / "decode_transducer.yaml").is_file() else ["decode_transducer"]
    assert not missing, f"{_name(conf)} lacks {missing}"


@pytest.mark.parametrize("model", model_configs(), ids=_name)
def test_model_config_has_auxiliary_ctc(model):
    # The public checkpoint holds ctc_lin when the pretrain uses auxiliary CTC: every role then loads it.
    assert resolve_config(model)["model_conf"]["auxiliary_ctc_weight"] > 0


def test_resolution_merges_mappings_and_replaces_the_rest(tmp_path):
    (tmp_path / "base.yaml").write_text("optim_conf: {lr: 0.1, eps: 1.0e-8}\nfreeze_param: [a, b]\npatience: 4\n"
                                        "seed: 0\n")
    (tmp_path / "mid.yaml").write_text("base_config: base.yaml\noptim_conf: {lr: 0.2}\nfreeze_param: [c]\n")
    (tmp_path / "role.yaml").write_text("base_config: mid.yaml\npatience: null\n")
    assert resolve_config(tmp_path / "role.yaml") == {"optim_conf": {"lr": 0.2, "eps": 1e-8}, "freeze_param": ["c"],
                                                      "patience": None, "seed": 0}
    (tmp_path / "loop.yaml").write_text("base_config: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base_config: loop.yaml\n")
    with pytest.raises(ValueError, match="leads back to itself"):
        resolve_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base_config: missing.yaml\n")
    with pytest.raises(ValueError, match="no such file"):
        resolve_config(tmp_path / "orphan.yaml")


@pytest.mark.parametrize("path", espnet_role_configs(), ids=_name)
def test_resolved_config_is_what_espnet_parses(path, tmp_path):
    out = tmp_path / "train_config.yaml"
    resolve_main([str(path), str(out)])
    assert yaml.safe_load(out.read_text()) == resolve_config(path) and BASE_KEY not in resolve_config(path)
    pytest.importorskip("espnet2")
    task = "espnet_pate.dpsgd.task:DPSGDASRTransducerTask" if "dpsgd" in path.name else \
        "espnet_pate.asr.transducer_task:PateASRTransducerTask"
    module, name = task.split(":")
    parser = getattr(__import__(module, fromlist=[name]), name).get_parser()
    args = parser.parse_args(["--config", str(out)])  # an unknown key would exit here
    assert args.max_epoch == resolve_config(path)["max_epoch"]


def test_public_model_selects_checkpoints_on_its_validation_loss():
    conf = resolve_config(CONF / "train_pretrain.yaml")
    assert conf["best_model_criterion"] == [["valid", "loss", "min"]] and conf["patience"]
    run_sh = (CONF.parent / "run.sh").read_text()
    assert '"${datadir}/public_labeled" --valid "$public_valid"' in run_sh  # dev without withheld words
