import time
from collections.abc import Callable

import jwt
import pytest

from gateway.auth.tokens import AuthError, TokenVerifier, bearer_token
from gateway.settings import Settings

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret!"


def verifier(**overrides: object) -> TokenVerifier:
    return TokenVerifier(Settings.load(auth_jwt_secret=SECRET, **overrides))


def token(**claims: object) -> str:
    body = {"sub": "alice", "exp": time.time() + 60, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


def test_valid_token() -> None:
    identity = verifier().verify(token(roles=["admin"]))
    assert identity.username == "alice" and identity.roles == {"admin"}


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: token(exp=time.time() - 10), "expired"),
        (
            lambda: jwt.encode(
                {"sub": "a", "exp": time.time() + 60}, "wrong" * 8, algorithm="HS256"
            ),
            "signature",
        ),
        (lambda: token(aud="other"), "audience"),
        (lambda: jwt.encode({"sub": "a"}, SECRET, algorithm="HS256"), "'exp'"),
        (lambda: "not-a-token", "invalid"),
    ],
    ids=["expired", "bad-signature", "wrong-audience", "no-exp", "garbage"],
)
def test_refusals_say_why(make: Callable[[], str], reason: str) -> None:
    # Tokens are made when the test runs, not at collection: "exp" is relative to now.
    with pytest.raises(AuthError, match=reason):
        verifier(auth_jwt_audience="wshub").verify(make())


def test_token_sources() -> None:
    assert bearer_token({"token": "abc"}, {}) == "abc"
    assert bearer_token(None, {"authorization": "Bearer xyz"}) == "xyz"
    assert bearer_token(None, {"authorization": "Basic xyz"}) is None
