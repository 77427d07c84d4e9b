"""Failover drills, in five parts.

* :mod:`.traffic`: what is sent: seeded texts, the mix of kinds, the schedule (pure);
* :mod:`.client`: the only I/O of the traffic: the gateway client, the client
  threads, the capacity measurement;
* :mod:`.stats`: windows, percentiles, failures, RTO, the slowest requests (pure);
* :mod:`.timeline`: the monitor's events relative to the fault (pure);
* :mod:`.judge`: the verdict against ``[drill]``'s objectives (pure);
* :mod:`.gateway`: the gateway pair's drills (the VIP holder killed or frozen);

and :mod:`.core`, which puts them together around a fault: :func:`prepare`,
:func:`execute`, :func:`run_drill`, and :func:`run` (prepare, then execute) for the CLI.
"""

from __future__ import annotations

from ..faults import FAULTS
from .core import (
    DrillOptions,
    DrillPlan,
    DrillReport,
    TrafficSettings,
    execute,
    prepare,
    read_state,
    resolve,
    run,
    run_drill,
    sigterm_unwinds,
    with_capacity,
)
from .gateway import CLIENT_TIMEOUT_S, GatewayReport, run_gateway_drill
from .stats import Sample
from .traffic import Mix

__all__ = ["FAULTS", "DrillOptions", "DrillPlan", "DrillReport", "GatewayReport", "Mix", "Sample", "TrafficSettings",
           "CLIENT_TIMEOUT_S", "execute", "prepare", "read_state", "resolve", "run", "run_drill", "run_gateway_drill",
           "sigterm_unwinds", "with_capacity"]
