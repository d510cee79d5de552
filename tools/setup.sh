#!/usr/bin/env bash
# Creates tools/venv and installs requirements.txt into it. Safe to re-run: when the venv
# already satisfies requirements.txt (checked by a stamp of its hash) it returns in seconds.
#   e.g.: tools/setup.sh            # then: . ./path.sh (from the repo root or any egs/<corpus>/)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$root/tools/venv
python=${PYTHON:-python3}
stamp=$venv/.requirements.sha256

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (setup.sh) $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v "$python" >/dev/null || die "$python not found; install Python >= 3.10 (e.g. apt-get install python3 python3-venv)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "Python >= 3.10 required, found $("$python" --version)"

want=$(sha256sum "$root/requirements.txt" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  log "tools/venv is up to date with requirements.txt"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  "$python" -m venv "$venv" || die "could not create a venv; install python3-venv (apt-get install python3-venv)"
fi
log "installing requirements.txt (torch/torchaudio take a few minutes the first time)"
# numpy first: pesq builds from source and imports numpy in its build step.
"$venv/bin/python" -m pip install -q --upgrade pip wheel "setuptools<82" numpy \
  || die "pip could not install build tools (is PyPI reachable?)"
"$venv/bin/python" -m pip install -q -r "$root/requirements.txt" \
  || die "pip install -r requirements.txt failed (see the messages above)"
"$venv/bin/python" -c 'import torch, torchaudio, pesq, pystoi, soundfile, yaml' \
  || die "the installed packages do not import; see the messages above"
echo "$want" > "$stamp"
log "done: $("$venv/bin/python" -c 'import torch, torchaudio; print("torch", torch.__version__, "torchaudio", torchaudio.__version__)')"
