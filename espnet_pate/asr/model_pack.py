"""A trained ESPnet transducer experiment as a model-zoo zip, made by ESPnet's own ``espnet2.bin.pack asr``.

``pack_experiment(system_dir, out_zip, extra_files)`` copies into a staging folder the config, the model, the files
the config references (token list, BPE model, non-linguistic symbols, feature statistics) and ``extra_files``
(README.md, the privacy card) at the top, points the config at the copies by relative paths, and runs
``python -m espnet2.bin.pack asr`` there. Relative names inside the zip are what ESPnet's unpacker rewrites into
the unpacked config, so ``ModelDownloader().download_and_unpack(zip)`` gives a config and model that the stock
``Speech2Text`` loads anywhere, and no absolute path of this machine enters the zip.

Layout inside the zip (ESPnet's model-zoo layout)::

    meta.yaml  README.md  privacy_card.json
    exp/<system>/config.yaml  exp/<system>/<model file>
    data/token_list/<token list, BPE model, non-linguistic symbols>
    exp/asr_stats/train/<feature statistics>
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Tuple

import yaml

from espnet_pate.asr.decode import MODEL_FILE

TOKEN_DIR = "data/token_list"
STATS_DIR = "exp/asr_stats/train"

__all__ = ["pack_experiment", "read_experiment", "referenced_files"]


def referenced_files(config: Dict, config_path: Path) -> List[Tuple[Tuple[str, ...], Path, str]]:
    """[(key path in the config, file, folder in the zip)] for every file the config needs at inference time.
    Relative paths are taken from the current directory (where the recipe trained); a missing one is an error
    naming the config and the key."""
    wanted = [(("token_list",), TOKEN_DIR), (("bpemodel",), TOKEN_DIR), (("non_linguistic_symbols",), TOKEN_DIR),
              (("normalize_conf", "stats_file"), STATS_DIR)]
    found = []
    for keys, folder in wanted:
        value = config
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        if not isinstance(value, str) or value.lower() == "none":
            continue  # absent, or held inline (ESPnet writes the token list itself into config.yaml)
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"{config_path}: {'.'.join(keys)} names {value}, which is not a file (relative "
                                    "paths are read from the current directory: run from the recipe's folder)")
        found.append((keys, path, folder))
    return found


def read_experiment(system_dir: os.PathLike | str, model_file: str = MODEL_FILE) -> Dict:
    """The training config of a trained experiment (config.yaml beside ``model_file``); a clear error naming the
    file that is missing or is not a config."""
    config_path, model = Path(system_dir) / "config.yaml", Path(system_dir) / model_file
    for path in (config_path, model):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (a trained ESPnet experiment has config.yaml and {model_file})")
    config = yaml.safe_load(config_path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: not an ESPnet training config (expected a mapping)")
    return config


def _set(config: Dict, keys: Tuple[str, ...], value: str) -> None:
    for k in keys[:-1]:
        config = config[k]
    config[keys[-1]] = value


def pack_experiment(system_dir: os.PathLike | str, out_zip: os.PathLike | str, model_file: str = MODEL_FILE,
                    extra_files: Mapping[str, str] = ()) -> Path:
    """Pack ``system_dir`` into ``out_zip`` (replaced atomically); ``extra_files`` maps top-level names in the zip
    to their text."""
    system_dir, out_zip = Path(system_dir), Path(out_zip)
    if out_zip.suffix != ".zip":
        raise ValueError(f"{out_zip}: the output must be a .zip (what the ESPnet model zoo serves)")
    config = read_experiment(system_dir, model_file)
    config_path, model = system_dir / "config.yaml", system_dir / model_file
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    exp = Path("exp") / system_dir.resolve().name
    with tempfile.TemporaryDirectory(dir=out_zip.parent, prefix=f".{out_zip.stem}.") as tmp:
        stage = Path(tmp)
        options = []
        for keys, path, folder in referenced_files(config, config_path):
            dest = Path(folder) / path.name
            (stage / folder).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, stage / dest)
            _set(config, keys, str(dest))
            options.append(str(dest))
        (stage / exp).mkdir(parents=True)
        shutil.copyfile(model, stage / exp / model_file)
        (stage / exp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
        for name, text in dict(extra_files).items():
            (stage / name).write_text(text)
            options.append(name)
        cmd = [sys.executable, "-m", "espnet2.bin.pack", "asr", "--asr_train_config", str(exp / "config.yaml"),
               "--asr_model_file", str(exp / model_file), "--outpath", "packed.zip"]
        for option in options:
            cmd += ["--option", option]
        proc = subprocess.run(cmd, cwd=stage, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"espnet2.bin.pack failed for {system_dir} (exit {proc.returncode}):\n{proc.stderr}")
        os.replace(stage / "packed.zip", out_zip)
    return out_zip
