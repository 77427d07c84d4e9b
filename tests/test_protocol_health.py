"""The typed /health document (ttsha.protocol.Health); claims are tested in tests/security."""

from __future__ import annotations

import pytest

from ttsha.protocol import Health, HealthError


def test_a_full_document_reads_typed():
    doc = {"status": "ready", "engine": "fake", "model_version": "1", "pid": 42, "role": "primary",
           "role_at": 100, "role_epoch": 3, "replication": {"queue_depth": 0}, "queue_depth": 1}
    health = Health.from_json(doc)
    assert health.ready and health.engine == "fake" and health.pid == 42 and health.role_epoch == 3
    assert health.role_at == 100.0 and isinstance(health.role_at, float)
    assert health.replication == {"queue_depth": 0} and health.raw is doc  # sub-documents stay reachable


def test_the_status_alone_is_a_document():
    health = Health.from_json({"status": "starting"})
    assert not health.ready and health.pid is None and health.role is None


@pytest.mark.parametrize("doc, field", [
    ([], "not a JSON object"), ({}, "status"), ({"status": 3}, "status"),
    ({"status": "ready", "pid": "42"}, "'pid'"), ({"status": "ready", "pid": True}, "'pid'"),
    ({"status": "ready", "role_epoch": 1.5}, "'role_epoch'"),
    ({"status": "ready", "replication": []}, "'replication'"),
])
def test_a_bad_document_is_refused_naming_the_field(doc, field):
    with pytest.raises(HealthError, match=field):
        Health.from_json(doc)
    assert Health.parse(doc) is None


def test_a_role_is_fresh_only_within_its_age():
    health = Health.from_json({"status": "ready", "role": "standby", "role_at": 1000.0})
    assert health.role_fresh(1010.0, 30.0) and not health.role_fresh(1031.0, 30.0)
    assert not Health.from_json({"status": "ready", "role_at": 1000.0}).role_fresh(1000.0, 30.0)
