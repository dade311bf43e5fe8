# Where corpora live (ESPnet convention): one variable per downloaded corpus, for the egs2/<corpus> recipes that
# read it. The default corpus is synthesised locally and needs no download.
# FSDD (github.com/Jakobovski/free-spoken-digit-dataset), read by egs2/fsdd/pate1/local/data.sh.
FSDD=${FSDD:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../shared/data/fsdd}
# LibriSpeech as unpacked from openslr.org/12 (egs2/librispeech_100/pate1): <root>/train-clean-100/ dev-clean/ ...
LIBRISPEECH=${LIBRISPEECH:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/downloads/LibriSpeech}
