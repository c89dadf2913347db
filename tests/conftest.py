import sys
from pathlib import Path

import pytest

# The tests' own helper modules (volumes, servers, references, workflow runs), importable from every folder.
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = SHARED / "data" / "real"
BASELINE_FIXTURES = SHARED / "fixtures" / "baselines"


@pytest.fixture(scope="session")
def shared_data():
    """The real volumes beside the project (../shared/data/real); tests skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def baseline_fixtures():
    """The original codes' state dicts, inputs and outputs (../shared/fixtures/baselines); skip when absent."""
    if not BASELINE_FIXTURES.is_dir():
        pytest.skip("../shared/fixtures/baselines is not present")
    return BASELINE_FIXTURES
