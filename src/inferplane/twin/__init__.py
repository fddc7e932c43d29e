"""The digital twin: the fleet on a simulated clock, driving the gateway's own policies."""

from inferplane.twin._loop import EventLoop
from inferplane.twin._native import compiled, run_plain
from inferplane.twin._results import run_scenario, simulate_to
from inferplane.twin._scenario import Scenario, load_scenario
from inferplane.twin._simulate import REQUEST_COLUMNS, Simulation
from inferplane.twin._workload import (
    Arrival,
    PrefixSpec,
    StreamSpec,
    TraceError,
    WorkloadSpec,
    arrivals,
    read_trace,
)

__all__ = [
    "REQUEST_COLUMNS",
    "Arrival",
    "EventLoop",
    "PrefixSpec",
    "Scenario",
    "Simulation",
    "StreamSpec",
    "TraceError",
    "WorkloadSpec",
    "arrivals",
    "compiled",
    "load_scenario",
    "read_trace",
    "run_plain",
    "run_scenario",
    "simulate_to",
]
