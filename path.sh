# Source from the repo root or from egs/<corpus>/:  . ./path.sh
# Activates tools/venv (made by tools/setup.sh) and puts the repo root on PYTHONPATH.
SE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
export SE_ROOT
if [ ! -f "$SE_ROOT/tools/venv/bin/activate" ]; then
  echo "path.sh: $SE_ROOT/tools/venv not found; run $SE_ROOT/tools/setup.sh first" >&2
  return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
. "$SE_ROOT/tools/venv/bin/activate"
export PYTHONPATH=$SE_ROOT${PYTHONPATH:+:$PYTHONPATH}
export PATH=$SE_ROOT/steps:$PATH
export PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
# idle OpenMP threads sleep instead of spinning: on a shared or oversubscribed machine spinning
# threads made 2-thread CPU training several times slower than 1 thread
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
