from setuptools import find_packages, setup

setup(
    name="espnet_pate",
    version="0.1.0",
    description="ESPnet recipe extension for differentially private ASR: PATE and DP-SGD for RNN-T",
    packages=find_packages(include=["espnet_pate", "espnet_pate.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=["espnet==202511", "torchaudio", "sentencepiece", "jiwer", "dp-accounting", "pyyaml", "numpy"],
)
