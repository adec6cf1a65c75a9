"""The garbage collector in xsha's long-running processes.

CPython's full (generation 2) collection walks every container object the collector tracks. A started service holds
some 10^5 of them (modules, SQLAlchemy's metadata and compiled statements, protobuf descriptors, gRPC), none of them
garbage, and on a 2-core machine each full collection stopped every thread for 50-100 ms: the slowest responses of
a busy service were those pauses. Frozen once the process has started, those objects are no longer walked, and a
full collection only looks at what was allocated since.

The young generation's threshold is raised for the same reason. A young collection runs once allocations of
container objects exceed deallocations by the threshold (700 by default). One event batch holds thousands of dicts
and objects alive at once (decoded records, rows, change payloads), all freed by reference counting moments later;
at 700, collections ran in the middle of nearly every batch, moved the batch's live objects to older generations,
and those promotions set off full collections that walked the whole mirror (the watchers' pool views and the VM row
cache). In sync_service's fixed-rate ingest trials (20,000 VMs, 2,000-10,000 changes/s), collections took 8.5-19 %
of its wall time with every thread stopped, half of it in full collections of up to 100 ms; at YOUNG_THRESHOLD,
0-2 % on SQLite and MariaDB. A garbage cycle is never freed by reference counting, so it still counts toward
the threshold: what cycles leave uncollected stays under YOUNG_THRESHOLD objects.
"""

from __future__ import annotations

import gc
import logging
from typing import Final

log = logging.getLogger(__name__)

# Above the container objects an event batch of some thousand changes holds alive at once, so such transients do
# not start collections; at 20,000 they still did at 6,500 changes/s (1.5 % of the wall time against 0.2 %).
YOUNG_THRESHOLD: Final = 50_000


def freeze_startup_objects() -> int:
    """Collects what start-up left as garbage, then moves every object alive now into the collector's permanent
    generation, which full collections skip. Returns how many objects were frozen.

    Call once, after the process has started serving. Reference counting still frees a frozen object that falls
    out of use; only a reference cycle among frozen objects would be kept, and start-up objects live as long as
    the process."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("start-up objects frozen out of full garbage collections", extra={"objects": frozen})
    return frozen


def raise_young_threshold(threshold: int = YOUNG_THRESHOLD) -> None:
    """Sets the young generation's collection threshold (see the module's docstring); the older generations'
    thresholds, which count younger collections, are left as they are."""
    if threshold <= 0:
        raise ValueError("a threshold of 0 or less would turn the cycle collector off")
    _, middle, old = gc.get_threshold()
    gc.set_threshold(threshold, middle, old)


def tune_for_serving() -> int:
    """What a service does once it serves: the young threshold raised and start-up objects frozen. Returns how many
    objects were frozen."""
    raise_young_threshold()
    return freeze_startup_objects()
