"""Speech-enhancement metrics: one module per family, one entry point per pair.

Columns (the order of scores.tsv), family and the rate each is computed at:

=============  ============================================  =====================
column         what                                          rate
=============  ============================================  =====================
pesq_wb        PESQ P.862.2 MOS-LQO (pesq_mos.py)             16 kHz copy
pesq_nb        PESQ P.862.1 MOS-LQO (pesq_mos.py)             8 kHz copy
stoi, estoi    STOI / extended STOI (stoi.py, pystoi)         16 kHz copy
si_sdr, snr    SI-SDR and plain SNR, dB (sdr.py)              native
sdr            BSS-Eval SDR, dB (sdr.py, fast_bss_eval)       native
csig cbak      Loizou's composite measures and their parts   16 kHz copy
covl llr wss   (composite.py)
segsnr
lsd            log-spectral distance, URGENT 2025 (lsd.py)    native
dnsmos_*       DNSMOS P.835 sig/bak/ovrl and P.808, no        16 kHz copy
               reference (dnsmos.py)
plcmos         PLCMOS v2, packet-loss concealment MOS, no     16 kHz copy
               reference (plcmos.py)
=============  ============================================  =====================

``score_pair`` (pair.py) turns one (reference, estimate) pair into one row; a value that does
not exist for the pair (silent reference, too short, ...) is NaN with a note, never an
exception.
"""

from __future__ import annotations

COLUMNS = (
    "pesq_wb", "pesq_nb", "stoi", "estoi", "si_sdr", "snr", "sdr",
    "csig", "cbak", "covl", "llr", "wss", "segsnr", "lsd",
    "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808", "plcmos",
)  # fmt: skip

DNSMOS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")
# Columns computed from the estimate alone: the only ones for sets without a clean reference.
NO_REFERENCE = frozenset(DNSMOS + ("plcmos",))

# Names accepted by --metrics besides the column names.
GROUPS = {
    "all": COLUMNS,
    "pesq": ("pesq_wb", "pesq_nb"),
    "composite": ("csig", "cbak", "covl", "llr", "wss", "segsnr"),
    "dnsmos": DNSMOS,
    "noref": tuple(c for c in COLUMNS if c in NO_REFERENCE),  # DNSMOS and PLCMOS
    "nodnsmos": tuple(c for c in COLUMNS if c not in NO_REFERENCE),  # every reference-based metric
}


def parse_metrics(spec: str) -> list[str]:
    """``"pesq,stoi,si_sdr"`` -> columns in canonical order; unknown names raise ValueError."""
    wanted: set[str] = set()
    for name in (s.strip() for s in spec.split(",")):
        if not name:
            continue
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in COLUMNS:
            wanted.add(name)
        else:
            raise ValueError(
                f"unknown metric '{name}'; choose from {', '.join(COLUMNS)} or the groups {', '.join(GROUPS)}"
            )
    if not wanted:
        raise ValueError("no metric selected")
    return [c for c in COLUMNS if c in wanted]


from se.metrics.common import Undefined  # noqa: E402
from se.metrics.pair import PairResult, metric_info, rates_used, score_pair  # noqa: E402

__all__ = [
    "COLUMNS", "DNSMOS", "GROUPS", "NO_REFERENCE", "PairResult", "Undefined",
    "metric_info", "parse_metrics", "rates_used", "score_pair",
]  # fmt: skip
