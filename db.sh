# Where corpora live (ESPnet convention). The default corpus is synthesised locally and needs no download.
FSDD=${FSDD:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../shared/data/fsdd}
