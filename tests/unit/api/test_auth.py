"""API keys: digests only, every key compared, the Bearer scheme."""

from __future__ import annotations

import hmac

import pytest

from gateway.api import auth
from gateway.api.auth import KeyRing

ALPHA = "alpha-key-0123456789abcdef"
BETA = "beta-key-0123456789abcdef"


def test_the_key_presented_is_found_among_several() -> None:
    ring = KeyRing([ALPHA, BETA])
    alpha = ring.identify(f"Bearer {ALPHA}")
    beta = ring.identify(f"bearer  {BETA} ")
    assert alpha is not None and beta is not None
    assert alpha.id != beta.id
    assert alpha.id.startswith("k") and len(alpha.id) == 13


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", f"Basic {ALPHA}", f"Bearer {ALPHA}x", f"Bearer {ALPHA[:-1]}"],
)
def test_no_key_or_a_wrong_one_is_none(header: str | None) -> None:
    assert KeyRing([ALPHA, BETA]).identify(header) is None


def test_ids_do_not_depend_on_the_order_of_keys() -> None:
    first = KeyRing([ALPHA, BETA]).identify(f"Bearer {BETA}")
    second = KeyRing([BETA, ALPHA]).identify(f"Bearer {BETA}")
    assert first is not None and first == second


def test_only_digests_are_kept() -> None:
    ring = KeyRing([ALPHA])
    kept = repr(vars(ring)) + repr(ring.identify(f"Bearer {ALPHA}"))
    assert ALPHA not in kept and ALPHA.encode().hex() not in kept


def test_every_key_is_compared_even_after_a_match(monkeypatch) -> None:
    compared: list[bytes] = []
    real = hmac.compare_digest

    def compare(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", compare)
    ring = KeyRing([ALPHA, BETA, "gamma-key-0123456789abcdef"])
    assert ring.identify(f"Bearer {ALPHA}") is not None  # the first key matches
    assert len(compared) == 3
