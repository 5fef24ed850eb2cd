"""Optional JWT authentication against a live gateway."""

import asyncio
import time

import jwt
import pytest
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.client import Client

SECRET = "test-secret-that-is-long-enough-for-hs256"


def token(sub: str = "alice", *, key: str = SECRET, ttl: float = 60, **claims: object) -> str:
    return jwt.encode({"sub": sub, "exp": time.time() + ttl, **claims}, key, algorithm="HS256")


@pytest.fixture
def auth_server(server_factory):
    return server_factory(
        auth_jwt_secret=SECRET, auth_jwt_audience="wshub", auth_broadcast_role="broadcaster"
    )


async def refused(url: str, **connect: object) -> str:
    client = Client(url)
    with pytest.raises(socketio.exceptions.ConnectionError) as caught:
        await client.connect(**connect)  # type: ignore[arg-type]
    await client.close()
    return str(caught.value)


async def test_token_in_auth_payload_sets_the_username(auth_server, clients) -> None:
    client = await clients.new(auth_server.url).connect(auth={"token": token(aud="wshub")})
    listing = await client.call("system:clients")
    assert listing["clients"][0]["username"] == "alice"


async def test_token_in_authorization_header(auth_server, clients) -> None:
    client = clients.new(auth_server.url)
    await client.connect(headers={"Authorization": f"Bearer {token('bob', aud='wshub')}"})
    await client.login("bob")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: None, "a token is required"),
        (
            lambda: {"token": token(key="another-secret-another-secret-xx", aud="wshub")},
            "signature",
        ),
        (lambda: {"token": token(ttl=-5, aud="wshub")}, "expired"),
        (lambda: {"token": token(aud="somebody-else")}, "audience"),
    ],
    ids=["missing", "bad-signature", "expired", "wrong-audience"],
)
async def test_bad_tokens_are_refused_with_the_reason(auth_server, clients, make, reason) -> None:
    client = clients.new(auth_server.url)
    errors: list[object] = []
    client.sio.on("connect_error", lambda data: errors.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(auth=make())
    assert errors, "no connect_error received"
    assert reason in str(errors[0]) and "authentication failed" in str(errors[0])


async def test_impersonation_is_forbidden(auth_server, clients) -> None:
    client = await clients.new(auth_server.url).connect(auth={"token": token(aud="wshub")})
    await client.emit("system:setData", {"username": "mallory"})
    assert (await client.expect("system:dataSet"))["success"] is False
    assert (await client.expect("system:error"))["code"] == "FORBIDDEN"
    await client.emit("system:setData", {"profile": {"a": 1}})
    assert (await client.expect("system:dataSet"))["success"] is True


async def test_broadcast_needs_the_role(auth_server, clients) -> None:
    plain, caster = clients.new(auth_server.url), clients.new(auth_server.url)
    await plain.connect(auth={"token": token("plain", aud="wshub")})
    await caster.connect(auth={"token": token("caster", aud="wshub", roles=["broadcaster"])})
    await plain.emit("system:general", {"type": "x"})
    error = await plain.expect("system:error")
    assert error["code"] == "FORBIDDEN" and "broadcaster" in error["message"]
    await caster.emit("system:general", {"type": "x"})
    assert (await plain.expect("system:general"))["sender"]["username"] == "caster"


async def test_connection_ends_when_its_token_expires(auth_server, clients) -> None:
    client = await clients.new(auth_server.url).connect(auth={"token": token(aud="wshub", ttl=1.0)})
    notice = await client.expect("system:disconnect", timeout=4)
    assert notice["reason"] == "token_expired"
    assert notice["reconnect"] == "reconnect with a fresh token"
    await asyncio.wait_for(client.disconnected.wait(), 3)


async def test_second_connection_of_the_same_user_is_refused_with_reject(
    server_factory, clients
) -> None:
    server = server_factory(
        auth_jwt_secret=SECRET, auth_jwt_audience="wshub", user_connections="reject"
    )
    first = await clients.new(server.url).connect(auth={"token": token(aud="wshub")})
    client = clients.new(server.url)
    errors: list[object] = []
    client.sio.on("connect_error", lambda data: errors.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(auth={"token": token(aud="wshub")})
    assert errors == [
        {"message": "user 'alice' is already connected", "data": {"code": "DUPLICATE_USERNAME"}}
    ]
    assert "timestamp" in await first.call("client-ping")  # the live holder keeps its place


async def test_es256_public_key(server_factory, clients, tmp_path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "jwt.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    server = server_factory(auth_jwt_public_key_file=str(public), auth_jwt_issuer="idp")
    good = jwt.encode(
        {"sub": "erin", "exp": time.time() + 60, "iss": "idp"}, key, algorithm="ES256"
    )
    client = await clients.new(server.url).connect(auth={"token": good})
    await client.login("erin")
    await client.close()  # erin leaves: only its signature can get the forged token refused
    forged = jwt.encode(
        {"sub": "erin", "exp": time.time() + 60, "iss": "idp"},
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
    )
    await refused(server.url, auth={"token": forged})
