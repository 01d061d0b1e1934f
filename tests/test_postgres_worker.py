"""The worker's exclusive lease on a real PostgreSQL server: two workers on
two engines (the conditional UPDATE that takes the lease must serialise on the
row and re-check it), and a stress run of two multi-threaded executors."""

from __future__ import annotations

import pytest
from worker_kit import exclusive_lease_scenario, exclusive_stress

from ecrm_core import CRM
from ecrm_core.testing.channels import FakeClock
from ecrm_core.worker import JobRunner

pytestmark = pytest.mark.postgres


def _second(first: CRM, **options) -> CRM:
    url = first.db.engine.url.render_as_string(hide_password=False)
    second = CRM(url, load_entrypoints=False, **options)
    assert second.db.engine is not first.db.engine and second.db.dialect == "postgresql"
    return second


def test_exclusive_lease_between_two_workers_on_postgres(pg_crm_factory):
    clock = FakeClock()
    first = pg_crm_factory(clock=clock)
    second = _second(first, clock=clock)
    try:
        exclusive_lease_scenario(first, second, clock)
    finally:
        second.close()


def test_exclusive_job_never_overlaps_under_two_concurrent_workers_on_postgres(pg_crm_factory):
    first = pg_crm_factory()
    second = _second(first)
    try:
        probe = exclusive_stress(first, second)
    finally:
        second.close()
    [state] = JobRunner(first, jobs=["probe.*"]).states()
    assert state.runs == probe.ticks and state.lease_owner is None


def test_a_lease_left_by_a_crashed_worker_expires_on_postgres(pg_crm_factory):
    clock = FakeClock()
    crm = pg_crm_factory(clock=clock)
    spec = crm.registry.jobs["segments.refresh"]
    dead = JobRunner(crm, jobs=["segments.refresh"])
    dead._ensure(spec.name, "default")
    assert dead._acquire(spec, "default", clock(), False) is None  # ...and the process dies here
    other = _second(crm, clock=clock)
    try:
        survivor = JobRunner(other, jobs=["segments.refresh"])
        assert survivor.tick(spec.name, "default").status == "busy"
        clock.advance(seconds=spec.lease + 1)
        assert survivor.tick(spec.name, "default").status == "ran"
    finally:
        other.close()
