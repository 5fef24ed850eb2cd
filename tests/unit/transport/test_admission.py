import ipaddress

import pytest

from gateway.transport.admission import Admission, AdmissionPolicy, Refusal, Ticket, client_address

TRUSTED = [ipaddress.ip_network("10.0.0.0/8")]


def admission(**overrides: float) -> Admission:
    policy = dict(max_connections=3, max_per_address=2, connect_rate=1, connect_burst=10)
    policy.update(overrides)
    return Admission(AdmissionPolicy(**policy), clock=lambda: 0.0)  # type: ignore[arg-type]


def ticket(admitted: Ticket | Refusal) -> Ticket:
    assert isinstance(admitted, Ticket), admitted
    return admitted


def refusal(admitted: Ticket | Refusal) -> Refusal:
    assert isinstance(admitted, Refusal), admitted
    return admitted


def test_per_address_and_total_caps() -> None:
    a = admission()
    first = ticket(a.admit("1.1.1.1"))
    ticket(a.admit("1.1.1.1"))
    capped = refusal(a.admit("1.1.1.1"))
    assert (capped.status, capped.code) == (429, "RATE_LIMIT")
    assert capped.message == "too many connections from your address (max 2)"
    ticket(a.admit("2.2.2.2"))
    full = refusal(a.admit("3.3.3.3"))
    assert full.body() == {"code": "UNAVAILABLE", "message": "server full (3 connections)"}
    assert (a.open, a.held_by("1.1.1.1")) == (3, 2)
    first.release()
    assert (a.open, a.held_by("1.1.1.1")) == (2, 1)
    ticket(a.admit("3.3.3.3"))


def test_a_ticket_is_returned_exactly_once() -> None:
    a = admission()
    held = ticket(a.admit("1.1.1.1"))
    held.release()
    with pytest.raises(RuntimeError, match="released twice"):
        held.release()
    assert a.open == 0


def test_connect_rate_per_address() -> None:
    a = admission(max_per_address=100, max_connections=100, connect_burst=2)
    ticket(a.admit("1.1.1.1"))
    ticket(a.admit("1.1.1.1"))
    slow = refusal(a.admit("1.1.1.1"))
    assert slow.message == "connecting too fast; retry in 1.0 s"
    assert slow.body()["retryAfterMs"] == 1000
    ticket(a.admit("2.2.2.2"))


def test_forwarded_for_only_from_trusted_proxies() -> None:
    assert client_address("1.2.3.4", "6.6.6.6", TRUSTED) == "1.2.3.4"
    assert client_address("10.0.0.1", "6.6.6.6", TRUSTED) == "6.6.6.6"
    # A client cannot hide behind a forged first hop: the right-most untrusted one counts.
    assert client_address("10.0.0.1", "6.6.6.6, 7.7.7.7, 10.0.0.2", TRUSTED) == "7.7.7.7"
    assert client_address("10.0.0.1", None, TRUSTED) == "10.0.0.1"
    # A hop that is not an address ends the chain: the proxy's own address is used.
    assert client_address("10.0.0.1", "6.6.6.6\nINFO forged", TRUSTED) == "10.0.0.1"
