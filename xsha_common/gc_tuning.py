"""The garbage collector in xsha's long-running processes.

CPython's full (generation 2) collection walks every container object the collector tracks. A started service holds
some 10^5 of them (modules, SQLAlchemy's metadata and compiled statements, protobuf descriptors, gRPC), none of them
garbage, and on a 2-core machine each full collection stopped every thread for 50-100 ms: the slowest responses of
a busy service were those pauses. Frozen once the process has started, those objects are no longer walked, and a
full collection only looks at what was allocated since.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


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
