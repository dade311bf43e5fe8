# Where corpora live (ESPnet convention). The default corpus is synthesised locally and needs no download.
FSDD=${FSDD:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../shared/data/fsdd}
# LibriSpeech as unpacked from openslr.org/12 (egs2/librispeech_100/pate1): <root>/train-clean-100/ dev-clean/ ...
LIBRISPEECH=${LIBRISPEECH:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/downloads/LibriSpeech}
