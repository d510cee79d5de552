#!/usr/bin/env bash
# Run jobs on this machine, Kaldi run.pl style (the logic is in se/jobs.py):
#   steps/run.sh [--max-jobs-run N] [--gpu N --mem M --num-threads N: ignored] \
#     [JOB=1:N] LOGFILE command ...
# e.g.: steps/run.sh JOB=1:4 exp/x/log/enhance.JOB.log python -m se.bin.enhance --num-jobs 4 --job JOB --checkpoint exp/x --input data/test/wav.scp --output-dir exp/x/enhanced
exec python3 -I "$(dirname "${BASH_SOURCE[0]}")/../se/jobs.py" local "$@"
