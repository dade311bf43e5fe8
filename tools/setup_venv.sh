#!/usr/bin/env bash
# Usage: tools/setup_venv.sh [--force]
# Creates tools/venv (the ESPnet convention; path.sh activates it) with versions shown to install and
# run together on this kind of machine, and installs the Debian packages the default corpus needs.
# Safe to rerun: a finished install leaves tools/venv/.done and is skipped.
set -euo pipefail
cd "$(dirname "$0")"
force=false; [ "${1:-}" = "--force" ] && force=true

if [ -f venv/.done ] && ! $force; then exit 0; fi

install_debian() {
  local pkgs="espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox libsox-fmt-all"
  local missing=""
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  [ -z "$missing" ] && return 0
  echo "[setup] installing Debian packages:$missing"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing; }; then
    echo "[setup] ERROR: could not install the Debian packages:$missing" >&2
    echo "[setup] Install them yourself (apt-get install$missing) and rerun; the synthetic corpus needs them." >&2
    exit 1
  fi
}
install_debian

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "espnet 202511 needs Python 3.11"' || {
  echo "[setup] ERROR: Python 3.11 is required (found $($PY --version))" >&2; exit 1; }

[ -d venv ] || "$PY" -m venv venv
# The machine-wide pip constraint caps torch below versions we do not use; it does not affect these pins.
export PIP_DISABLE_PIP_VERSION_CHECK=1
venv/bin/pip install -q "setuptools<74" wheel
if ! venv/bin/pip install -q -r requirements.txt > venv/pip.log 2>&1; then
  grep -v "^WARNING: Location" venv/pip.log >&2
  echo "[setup] ERROR: pip install failed (log: tools/venv/pip.log)" >&2; exit 1
fi
venv/bin/pip install -q --no-deps -e ..
venv/bin/python - <<'PY'
import torch, torchaudio, torchaudio.functional as F
import espnet, sentencepiece, jiwer, dp_accounting, yaml
lp = torch.randn(1, 4, 3, 5, requires_grad=True)
F.rnnt_loss(lp, torch.tensor([[1, 2]], dtype=torch.int32), torch.tensor([4], dtype=torch.int32),
            torch.tensor([2], dtype=torch.int32), blank=0).backward()
print(f"[setup] torch {torch.__version__}, torchaudio {torchaudio.__version__}, espnet {espnet.__version__}: rnnt_loss OK")
PY
touch venv/.done
