"""Failover drills, in five parts.

* :mod:`.traffic`: what is sent: seeded texts, the mix of kinds, the schedule (pure);
* :mod:`.client`: the only I/O of the traffic: the gateway client, the client
  threads, the capacity measurement;
* :mod:`.stats`: windows, percentiles, failures, RTO, the slowest requests (pure);
* :mod:`.timeline`: the monitor's events relative to the fault (pure);
* :mod:`.judge`: the verdict against ``[drill]``'s objectives (pure);

and :mod:`.core`, which puts them together around a fault: :func:`prepare`,
:func:`execute`, :func:`run_drill`.
"""

from __future__ import annotations

from ..faults import FAULTS
from .core import DrillOptions, DrillPlan, DrillReport, TrafficSettings, execute, prepare, read_state, run_drill
from .stats import Sample
from .traffic import Mix

__all__ = ["FAULTS", "DrillOptions", "DrillPlan", "DrillReport", "Mix", "Sample", "TrafficSettings", "execute",
           "prepare", "read_state", "run_drill"]
