"""Reusable infrastructure for xsha's reliability, security and contract tests (issue 9).

- `tcp_proxy.FaultProxy`: a TCP proxy that cuts, stalls or slows a link at run time.
- `proto_strategies`: hypothesis strategies for every RPC's request, good and bad, and a generic `invoke`.
- `invariants`: which status codes each RPC may answer, and checks of an answer's shape.
- `echo`: a recording TCP echo server and socket helpers, for tests of the proxy (and of anything TCP).
"""
