"""The reference consumers of figure 1, each run as its own process (`python -m bench.consumers ...`).

bare:  the limit. sync_service's own XAPI client (same wire format, same HTTP connection handling, same
       decoding and event parsing), following event.from and doing nothing else. It prints
       `SEEN <ref> <name_label> <unix time>` when a probe VM's name changes, so the driver can time it.
naive: what a straightforward port of CloudStack's polling code would be: the stock XenAPI SDK's event.from
       (XML-RPC), and per VM event one UPDATE and one commit through SQLAlchemy Core.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import sqlalchemy as sa
import XenAPI

from sync_service.domain import WATCHED_CLASSES
from sync_service.xapi import XapiEndpoint, connect
from xsha_common.db import create_engine_for

NAIVE_TABLE = "bench_naive_vms"
_stop = False


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _stop
    _stop = True
    raise KeyboardInterrupt


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_bare(url: str, wire: str, probes: set[str], user: str, password: str) -> None:
    client = connect(XapiEndpoint(url), user, password, wire=wire, timeout=60.0)  # type: ignore[arg-type]
    batch = client.event_from(WATCHED_CLASSES, "", 30.0)
    token = batch.token
    names: dict[str, str] = {}
    for event in batch.events:
        if event.ref in probes and event.snapshot is not None:
            names[event.ref] = str(event.snapshot.get("name_label", ""))
    _emit(f"READY {len(batch.events)}")
    events = 0
    while not _stop:
        batch = client.event_from(WATCHED_CLASSES, token, 5.0)
        token = batch.token
        now = time.time()
        events += len(batch.events)
        for event in batch.events:
            if event.ref in probes and event.snapshot is not None:
                name = str(event.snapshot.get("name_label", ""))
                if names.get(event.ref) != name:
                    names[event.ref] = name
                    _emit(f"SEEN {event.ref} {name} {now:.6f}")


def _is_user_vm(record: dict[str, Any]) -> bool:
    return not (record.get("is_a_template") or record.get("is_a_snapshot") or record.get("is_control_domain"))


def run_naive(url: str, db_url: str, user: str, password: str) -> None:
    session = XenAPI.Session(url)
    session.xenapi.login_with_password(user, password, "1.0", "xsha-bench-naive")
    event_from = getattr(session.xenapi.event, "from")
    engine = create_engine_for(db_url, pool_size=1, max_overflow=0)
    metadata = sa.MetaData()
    table = sa.Table(
        NAIVE_TABLE,
        metadata,
        sa.Column("uuid", sa.String(64), primary_key=True),
        sa.Column("ref", sa.String(128)),
        sa.Column("name_label", sa.String(255)),
        sa.Column("power_state", sa.String(32)),
        sa.Column("resident_on", sa.String(128)),
    )
    metadata.drop_all(engine)
    metadata.create_all(engine)
    first = event_from(["vm"], "", 30.0)
    rows = [
        {
            "uuid": e["snapshot"]["uuid"],
            "ref": e["ref"],
            "name_label": e["snapshot"]["name_label"],
            "power_state": e["snapshot"]["power_state"],
            "resident_on": e["snapshot"]["resident_on"],
        }
        for e in first["events"]
        if "snapshot" in e and _is_user_vm(e["snapshot"])
    ]
    with engine.begin() as connection:
        connection.execute(sa.insert(table), rows)
    token = first["token"]
    _emit(f"READY {len(rows)}")
    statement = (
        sa.update(table)
        .where(table.c.uuid == sa.bindparam("key"))
        .values(
            name_label=sa.bindparam("name_label"),
            power_state=sa.bindparam("power_state"),
            resident_on=sa.bindparam("resident_on"),
        )
    )
    while not _stop:
        batch = event_from(["vm"], token, 5.0)
        token = batch["token"]
        for event in batch["events"]:
            snapshot = event.get("snapshot")
            if not snapshot or not _is_user_vm(snapshot):
                continue
            # CloudStack's VM sync: one row, one transaction, per VM report.
            with engine.begin() as connection:
                connection.execute(
                    statement,
                    {
                        "key": snapshot["uuid"],
                        "name_label": snapshot["name_label"],
                        "power_state": snapshot["power_state"],
                        "resident_on": snapshot["resident_on"],
                    },
                )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.consumers")
    parser.add_argument("kind", choices=("bare", "naive"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--wire", default="json", choices=("json", "xml"))
    parser.add_argument("--db", default="")
    parser.add_argument("--probes", default="", help="comma-separated VM refs to report (bare)")
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="password")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        if args.kind == "bare":
            run_bare(args.url, args.wire, set(filter(None, args.probes.split(","))), args.user, args.password)
        else:
            run_naive(args.url, args.db, args.user, args.password)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
