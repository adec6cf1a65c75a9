"""ha_service's domain policy: pure functions over plain data (no I/O, no gRPC, no database).

Import from the modules:
- model: enums (CloudStack's names) and frozen records.
- versions: the R3 version gate.
- policy: R1 effective mode, R2 pins, R4/R5 deployment and protection, R9 fencing, R11 drift.
- reconcile: R7 (with R8 ownership and R10) for one managed VM.
- migration: the R8 planner.
"""
