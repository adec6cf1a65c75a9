"""event.from semantics: listing, tokens, blocking, coalescing, add/mod/del, subscriptions, errors, inject."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest

from xapi_sim.model import ObjectStore, parse_subscription
from xapi_sim.records import message_record, vm_record
from xapi_sim.testing import XAPI_FAILURES, JsonRpcClient, SimControl, event_from, xmlrpc_proxy

TOKEN = re.compile(r"^\d{20},\d{20}$")


def vm_ref(session: Any, name: str) -> str:
    return str(session.xenapi.VM.get_by_name_label(name)[0])


def test_empty_token_lists_everything_as_add(sim, clients):
    session = clients.session(sim.master_url())
    result = event_from(session, ["*"], "", 1.0)
    events = result["events"]
    assert {e["operation"] for e in events} == {"add"}
    assert {e["class"] for e in events} == {"pool", "host", "host_metrics", "vm"}
    assert all(isinstance(e["id"], str) and e["timestamp"] and "snapshot" in e for e in events)
    vms = [e for e in events if e["class"] == "vm"]
    assert len(vms) == len(session.xenapi.VM.get_all())
    counts = {k: clients.int_(v) for k, v in result["valid_ref_counts"].items()}
    assert counts["vm"] == len(vms) and counts["host"] == 3 and counts["pool"] == 1
    assert TOKEN.match(result["token"])
    snapshot = next(e for e in vms if e["snapshot"]["name_label"] == "web-1")["snapshot"]
    assert snapshot == session.xenapi.VM.get_record(vm_ref(session, "web-1"))


def test_timeout_returns_no_events_and_a_token(sim, clients):
    session = clients.session(sim.master_url())
    token = event_from(session, ["vm"], "", 1.0)["token"]
    result = event_from(session, ["vm"], token, 0.2)
    assert result["events"] == [] and TOKEN.match(result["token"])


def test_blocking_call_returns_when_a_change_happens(sim, clients):
    session = clients.session(sim.master_url())
    token = event_from(session, ["vm"], "", 1.0)["token"]
    ref = vm_ref(session, "halted-1")
    other = clients.session(sim.master_url())
    timer = threading.Timer(0.2, lambda: other.xenapi.VM.set_name_description(ref, "changed"))
    timer.start()
    result = event_from(session, ["vm"], token, 30.0)
    timer.join()
    assert [(e["operation"], e["ref"]) for e in result["events"]] == [("mod", ref)]
    assert result["events"][0]["snapshot"]["name_description"] == "changed"
    assert result["token"] > token  # tokens compare as strings


def test_changes_coalesce_to_one_event_with_the_latest_snapshot(sim, clients):
    session = clients.session(sim.master_url())
    token = event_from(session, ["vm"], "", 1.0)["token"]
    ref = vm_ref(session, "halted-1")
    for n in range(3):
        session.xenapi.VM.set_name_description(ref, f"v{n}")
    session.xenapi.VM.set_order(ref, "7" if clients.wire == "xmlrpc" else 7)
    events = event_from(session, ["vm"], token, 1.0)["events"]
    assert len(events) == 1
    assert events[0]["snapshot"]["name_description"] == "v2" and clients.int_(events[0]["snapshot"]["order"]) == 7


def test_add_mod_del_and_created_then_deleted_inside_the_window(sim, clients):
    session = clients.session(sim.master_url())
    token = event_from(session, ["vm"], "", 1.0)["token"]
    template = next(r for r in session.xenapi.VM.get_all() if session.xenapi.VM.get_is_a_template(r))
    created = session.xenapi.VM.clone(template, "new-vm")
    ephemeral = session.xenapi.VM.clone(template, "short-lived")
    session.xenapi.VM.destroy(ephemeral)
    doomed = vm_ref(session, "halted-1")
    session.xenapi.VM.destroy(doomed)
    events = {e["ref"]: e for e in event_from(session, ["vm"], token, 1.0)["events"]}
    assert set(events) == {created, doomed}
    assert events[created]["operation"] == "add" and events[created]["snapshot"]["name_label"] == "new-vm"
    assert events[doomed]["operation"] == "del" and "snapshot" not in events[doomed]
    token2 = event_from(session, ["vm"], token, 1.0)["token"]
    session.xenapi.VM.set_name_label(created, "renamed")
    events = event_from(session, ["vm"], token2, 1.0)["events"]
    assert [(e["operation"], e["snapshot"]["name_label"]) for e in events] == [("mod", "renamed")]


def test_valid_ref_counts_reveal_missed_deletions(sim, clients):
    session = clients.session(sim.master_url())
    before = clients.int_(event_from(session, ["vm"], "", 1.0)["valid_ref_counts"]["vm"])
    session.xenapi.VM.destroy(vm_ref(session, "halted-1"))
    after = clients.int_(event_from(session, ["VM"], "", 1.0)["valid_ref_counts"]["vm"])
    assert after == before - 1


def test_subscriptions_star_case_insensitive_class_and_object(sim, clients):
    session = clients.session(sim.master_url())
    token = event_from(session, ["*"], "", 1.0)["token"]
    web, halted = vm_ref(session, "web-1"), vm_ref(session, "halted-1")
    session.xenapi.VM.set_name_description(web, "a")
    session.xenapi.VM.set_name_description(halted, "b")
    pool = session.xenapi.pool.get_all()[0]
    session.xenapi.pool.set_name_description(pool, "c")
    assert {e["ref"] for e in event_from(session, ["Vm"], token, 1.0)["events"]} == {web, halted}
    assert [e["ref"] for e in event_from(session, [f"vm/{halted}"], token, 1.0)["events"]] == [halted]
    assert {e["class"] for e in event_from(session, ["*"], token, 1.0)["events"]} == {"vm", "pool"}
    assert event_from(session, ["sr"], token, 0.1)["events"] == []  # a class the simulator does not model


def test_bad_token_and_bad_subscription(sim, clients):
    session = clients.session(sim.master_url())
    with pytest.raises(XAPI_FAILURES) as exc:
        event_from(session, ["vm"], "not-a-token", 1.0)
    assert exc.value.details == ["EVENT_FROM_TOKEN_PARSE_FAILURE", "not-a-token"]
    with pytest.raises(XAPI_FAILURES) as exc:
        event_from(session, ["vm/a/b"], "", 1.0)
    assert exc.value.details == ["EVENT_SUBSCRIPTION_PARSE_FAILURE", "vm/a/b"]


def test_inject_returns_a_token_and_touches_the_object(sim, clients):
    session = clients.session(sim.master_url())
    pool = session.xenapi.pool.get_all()[0]
    before = event_from(session, ["pool"], "", 1.0)["token"]
    token = session.xenapi.event.inject("pool", pool)
    assert TOKEN.match(token) and token > before
    events = event_from(session, ["pool"], before, 1.0)["events"]
    assert [(e["class"], e["operation"], e["ref"]) for e in events] == [("pool", "mod", pool)]
    assert event_from(session, ["pool"], token, 0.1)["events"] == []


def test_host_liveness_is_an_event_on_host_metrics(sim, clients):
    session = clients.session(sim.master_url())
    token = event_from(session, ["host", "host_metrics"], "", 1.0)["token"]
    sim.pool().crash_host(sim.pool().hosts[2])
    events = event_from(session, ["host", "host_metrics"], token, 5.0)["events"]
    metrics = [e for e in events if e["class"] == "host_metrics"]
    assert len(metrics) == 1 and metrics[0]["snapshot"]["live"] is False


def test_messages_are_events_of_class_message(sim, clients):
    session = clients.session(sim.master_url())
    token = event_from(session, ["message"], "", 1.0)["token"]
    ref = session.xenapi.message.create("TEST", "3" if clients.wire == "xmlrpc" else 3, "Pool", "u", "body")
    events = event_from(session, ["message"], token, 1.0)["events"]
    assert [(e["class"], e["operation"], e["ref"]) for e in events] == [("message", "add", ref)]
    assert events[0]["snapshot"]["name"] == "TEST"


def test_object_and_message_changes_are_cut_by_their_own_token_parts() -> None:
    """A token's first part cuts object changes and its second part cuts messages, each on its own; the events come
    newest first, a change of an object made and deleted inside the window does not appear, and a deletion does."""
    store = ObjectStore()

    def message(n: int) -> str:
        ref = f"OpaqueRef:m{n}"
        record = message_record(uuid_=f"m{n}", name="T", priority=3, cls="Pool", obj_uuid="p", body="")
        store.add("message", ref, record)
        return ref

    kept = store.add("VM", "OpaqueRef:kept", vm_record(uuid_="kept", name_label="kept", power_state="Halted"))
    gone = store.add("VM", "OpaqueRef:gone", vm_record(uuid_="gone", name_label="gone", power_state="Halted"))
    early = message(1)
    db_cut = store.gen  # VM changes after this point count
    message(2)
    msg_cut = store.gen  # messages after this point count
    store.modify(kept, {"name_label": "renamed"})
    late = message(3)
    store.delete(gone)
    brief = store.add("VM", "OpaqueRef:brief", vm_record(uuid_="brief", name_label="brief", power_state="Halted"))
    store.delete(brief)
    fresh = store.add("VM", "OpaqueRef:fresh", vm_record(uuid_="fresh", name_label="fresh", power_state="Halted"))

    events = store.changes_since(parse_subscription(["*"]), (db_cut, msg_cut))
    assert [(e["class"], e["operation"], e["ref"]) for e in events] == [
        ("vm", "add", fresh.ref),
        ("vm", "del", gone.ref),
        ("message", "add", late),
        ("vm", "mod", kept.ref),
    ]
    assert [int(e["id"]) for e in events] == sorted((int(e["id"]) for e in events), reverse=True)
    # The message part alone behind: every message after it, and object changes only after the first part.
    events = store.changes_since(parse_subscription(["*"]), (store.gen, 0))
    assert [e["ref"] for e in events] == [late, "OpaqueRef:m2", early]
    assert store.changes_since(parse_subscription(["vm"]), (store.gen, 0)) == []


def _raw_event_from(url: str, session: str, token: str, timeout: float) -> Any:
    return getattr(xmlrpc_proxy(url).event, "from")(session, ["vm"], token, timeout)


@pytest.mark.parametrize("how", ["logout", "expire_sessions"])
def test_session_destroyed_during_the_wait_fails_with_session_invalid(sim, how):
    url = sim.master_url()
    session = xmlrpc_proxy(url).session.login_with_password("root", "password")["Value"]
    token = _raw_event_from(url, session, "", 1.0)["Value"]["token"]
    result: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: result.update(_raw_event_from(url, session, token, 30.0)))
    waiter.start()
    while not any(e["method"] == "event.from" for e in sim.pool().calls_since(0)[1:]):
        waiter.join(0.02)
    waiter.join(0.2)  # let it enter the wait
    if how == "logout":
        xmlrpc_proxy(url).session.logout(session)
    else:
        SimControl(url).expire_sessions()
    waiter.join(10)
    assert not waiter.is_alive()
    assert result == {"Status": "Failure", "ErrorDescription": ["SESSION_INVALID", session]}


def test_session_invalid_over_jsonrpc_v2_and_v1(sim):
    for version in ("2.0", "1.0"):
        client = JsonRpcClient(sim.master_url(), version)
        _status, body = client.raw(
            b'{"jsonrpc": "2.0", "method": "VM.get_all", "params": ["OpaqueRef:x"], "id": 7}'
            if version == "2.0"
            else b'{"method": "VM.get_all", "params": ["OpaqueRef:x"], "id": 7}'
        )
        import orjson

        reply = orjson.loads(body)
        if version == "2.0":
            assert reply == {
                "jsonrpc": "2.0",
                "error": {"code": 1, "message": "SESSION_INVALID", "data": ["OpaqueRef:x"]},
                "id": 7,
            }
        else:
            assert reply == {"result": None, "error": ["SESSION_INVALID", "OpaqueRef:x"], "id": 7}


def test_invalidated_tokens_are_refused(sim, clients):
    session = clients.session(sim.master_url())
    token = event_from(session, ["vm"], "", 1.0)["token"]
    SimControl(sim.master_url()).invalidate_tokens()
    with pytest.raises(XAPI_FAILURES) as exc:
        event_from(session, ["vm"], token, 1.0)
    assert exc.value.details == ["EVENT_FROM_TOKEN_PARSE_FAILURE", token]
    fresh = event_from(session, ["vm"], "", 1.0)["token"]
    assert event_from(session, ["vm"], fresh, 0.1)["events"] == []


def test_restart_keeps_state_and_ports_but_drops_sessions_and_tokens(sim):
    url = sim.master_url()
    proxy = xmlrpc_proxy(url)
    session = proxy.session.login_with_password("root", "password")["Value"]
    proxy.VM.set_name_description(session, sim.pool().vm_by_name("web-1").ref, "kept")
    token = _raw_event_from(url, session, "", 1.0)["Value"]["token"]
    urls = sim.host_urls()
    sim.restart()
    assert sim.host_urls() == urls
    proxy = xmlrpc_proxy(url)
    assert proxy.VM.get_all(session)["ErrorDescription"] == ["SESSION_INVALID", session]
    session = proxy.session.login_with_password("root", "password")["Value"]
    assert _raw_event_from(url, session, token, 1.0)["ErrorDescription"] == ["EVENT_FROM_TOKEN_PARSE_FAILURE", token]
    web = sim.pool().vm_by_name("web-1").ref
    assert proxy.VM.get_name_description(session, web)["Value"] == "kept"
