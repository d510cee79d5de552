import os

# before torch starts OpenMP: idle threads sleep instead of spinning (see path.sh)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

import release_fill as _release_fill  # noqa: E402
from helpers import CLEARVOICE_DATA  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def clearvoice_data():
    """tests/data/clearvoice: parity references and state-dict manifests of the releases."""
    return CLEARVOICE_DATA


@pytest.fixture(scope="session")
def release_fill():
    """The deterministic weight fill of the parity references (tests/release_fill.py)."""
    return _release_fill
