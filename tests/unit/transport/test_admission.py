import ipaddress

from gateway.transport.admission import Admission, AdmissionPolicy, client_address

TRUSTED = [ipaddress.ip_network("10.0.0.0/8")]


def admission(**overrides: float) -> Admission:
    policy = dict(max_connections=3, max_per_address=2, connect_rate=1, connect_burst=10)
    policy.update(overrides)
    return Admission(AdmissionPolicy(**policy), clock=lambda: 0.0)  # type: ignore[arg-type]


def test_per_address_and_total_caps() -> None:
    a = admission()
    assert a.admit("1.1.1.1") is None
    assert a.admit("1.1.1.1") is None
    assert "too many connections from your address" in (a.admit("1.1.1.1") or "")
    assert a.admit("2.2.2.2") is None
    assert "server full" in (a.admit("3.3.3.3") or "")
    a.release("1.1.1.1")
    assert a.admit("3.3.3.3") is None


def test_connect_rate_per_address() -> None:
    a = admission(max_per_address=100, max_connections=100, connect_burst=2)
    assert a.admit("1.1.1.1") is None
    assert a.admit("1.1.1.1") is None
    assert "connecting too fast" in (a.admit("1.1.1.1") or "")
    assert a.admit("2.2.2.2") is None


def test_forwarded_for_only_from_trusted_proxies() -> None:
    assert client_address("1.2.3.4", "6.6.6.6", TRUSTED) == "1.2.3.4"
    assert client_address("10.0.0.1", "6.6.6.6", TRUSTED) == "6.6.6.6"
    # A client cannot hide behind a forged first hop: the right-most untrusted one counts.
    assert client_address("10.0.0.1", "6.6.6.6, 7.7.7.7, 10.0.0.2", TRUSTED) == "7.7.7.7"
    assert client_address("10.0.0.1", None, TRUSTED) == "10.0.0.1"
