import os
from pathlib import Path

# before torch starts OpenMP: idle threads sleep instead of spinning (see path.sh)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (CI copies it there too); SE_SHARED_DIR overrides.
SHARED = Path(os.environ.get("SE_SHARED_DIR", REPO.parent / "shared"))
COMPAT = SHARED / "clearvoice_compat"
SCORING_REFS = SHARED / "scoring_refs"


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def compat_dir() -> Path:
    if not COMPAT.is_dir():
        pytest.fail(f"{COMPAT} not found: parity references are required (set SE_SHARED_DIR)")
    return COMPAT


@pytest.fixture(scope="session")
def parity_fill_module(compat_dir):
    """Import shared/clearvoice_compat/parity_fill.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("parity_fill", compat_dir / "parity_fill.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
