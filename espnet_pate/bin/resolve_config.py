"""Write a training config resolved over its base_config chain, as ESPnet's --config takes it (one file).

    python -m espnet_pate.bin.resolve_config conf/train_student.yaml exp/student_x/train_config.yaml
"""
import argparse

import yaml

from espnet_pate.asr.train_config import resolve_config


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a role config (conf/train_*.yaml) or the model config")
    p.add_argument("out", help="the resolved YAML to write")
    a = p.parse_args(argv)
    try:
        conf = resolve_config(a.config)
    except ValueError as e:
        p.error(str(e))
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(f"# {a.config} resolved over its base_config (python -m espnet_pate.bin.resolve_config)\n")
        yaml.safe_dump(conf, f, sort_keys=False)


if __name__ == "__main__":
    main()
