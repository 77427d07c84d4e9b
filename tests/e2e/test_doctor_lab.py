"""``ttsha doctor`` on a running lab: the primary's host is a node and the gateway, and every check passes."""

from __future__ import annotations

import getpass

import pytest

from ttsha.config import load
from ttsha.doctor import FAIL, GATEWAY, NODE, OK, Host, run

from .conftest import running_lab

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory) as started:
        yield started


def test_doctor_passes_on_the_lab(lab):
    config = load(lab.layout().config)
    # The lab runs as this user, with no units installed: systemctl is not asked.
    host = Host(roles=frozenset({NODE, GATEWAY}), user=getpass.getuser(), systemctl=None)
    checks = {c.name: c for c in run(config, host)}
    assert [c for c in checks.values() if c.status == FAIL] == []
    for name in ("config", "user", "models dir", "state dir", "nginx config", "node primary", "node standby",
                 "ssh key", "known_hosts standby", "ssh standby", "role secret"):
        assert checks[name].status == OK, checks[name]
    assert "host key verified" in checks["ssh standby"].detail
    assert "checked as gateway and node primary" in checks["config"].detail
