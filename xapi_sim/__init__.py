"""xapi_sim: a faithful XenServer XAPI simulator (XML-RPC and JSON-RPC on real sockets) with native HA failover."""

from xapi_sim.errors import XapiError
from xapi_sim.pool import SimPool, VmSpec
from xapi_sim.simulator import Simulator

__all__ = ["SimPool", "Simulator", "VmSpec", "XapiError"]
