"""``ApiConfig.gc_freeze``: the app's startup freezes what exists, so full collections skip it."""

from __future__ import annotations

import gc

import pytest
from ecrm_api.app import create_app
from litestar.testing import TestClient


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_startup_freezes_the_collector_by_default(api_crm, unfrozen):
    app = create_app(api_crm, rate_limit=None, docs=False)
    assert gc.get_freeze_count() == 0  # building the app does not: the lifespan does
    with TestClient(app) as client:
        assert gc.get_freeze_count() > 1000  # the modules, the app, the CRM
        assert client.get("/health").json() == {"status": "ok"}


def test_gc_freeze_off_leaves_the_collector_alone(api_crm, unfrozen):
    app = create_app(api_crm, rate_limit=None, docs=False, gc_freeze=False)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert gc.get_freeze_count() == 0


def test_gc_freeze_must_be_a_boolean():
    from ecrm_api.config import ApiConfig

    from ecrm_core.errors import ValidationError

    with pytest.raises(ValidationError, match="gc_freeze"):
        ApiConfig(gc_freeze="no")


def test_a_process_freezes_once(api_crm, unfrozen):
    """A second app (or a host that froze already) does not freeze again: frozen objects are never
    collected, so each freeze would keep the garbage of what was alive at that moment."""
    with TestClient(create_app(api_crm, rate_limit=None, docs=False)):
        frozen = gc.get_freeze_count()
    garbage = [[] for _ in range(5000)]  # tracked by the collector
    with TestClient(create_app(api_crm, rate_limit=None, docs=False)):
        assert gc.get_freeze_count() < frozen + 5000  # the second startup froze nothing new
    del garbage
