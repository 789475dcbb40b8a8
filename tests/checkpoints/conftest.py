"""Each test starts and ends with a fresh run's Hub status (a test that makes the Hub unreachable
must not make the next one's Hub unreachable too)."""

import pytest

from checkpoints import hub_status


@pytest.fixture(autouse=True)
def _fresh_hub_status():
    hub_status.forget()
    yield
    hub_status.forget()
