"""Hypercorn's own configuration, read from ``hypercorn.toml`` with the CLI's overrides.

Hypercorn's ``Config.from_mapping`` accepts any key silently, so a misspelt ``certfle`` would
serve plain HTTP without a word; we refuse unknown keys instead. ``verify_mode`` may be written
as a name (``"CERT_REQUIRED"``), which plain Hypercorn rejects with a TypeError.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hypercorn.config import Config

from ..settings import SettingsError
from ..tls import TlsFiles, TlsReloader

DEFAULT_BIND = "127.0.0.1:8080"
DEFAULT_BACKLOG = 4096
GATEWAY_TABLE = "wshub"


class GatewayConfig(Config):
    """Hypercorn's Config whose listeners take their TLS context from a :class:`TlsReloader`.

    Hypercorn calls ``create_ssl_context`` once per worker; returning the reloader's listening
    context (whose ``sni_callback`` hands each handshake the newest valid context) is what
    makes certificates reloadable without touching a live context.
    """

    tls: TlsReloader | None = None

    def tls_files(self) -> TlsFiles | None:
        if self.certfile is None or self.keyfile is None:
            return None
        return TlsFiles(self.certfile, self.keyfile, self.ca_certs, self.keyfile_password)

    def create_ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return super().create_ssl_context()
        return self.tls.listening_context()

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes get the configuration, never live state: the reloader holds
        # contexts and tasks, and a read `_log` makes Hypercorn's logger unpicklable.
        state = dict(self.__dict__)
        state.pop("tls", None)
        state.pop("_log", None)
        return state


def load_config(path: str | os.PathLike[str] | None, overrides: Mapping[str, Any]) -> GatewayConfig:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with Path(path).open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise SettingsError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    data.pop(GATEWAY_TABLE, None)
    data.update({key: value for key, value in overrides.items() if value is not None})
    known = set(dir(Config))
    for key in data:
        if key not in known:
            raise SettingsError(f"unknown Hypercorn setting {key!r} in {path or 'overrides'}")
    if "verify_mode" in data:
        data["verify_mode"] = _verify_mode(data["verify_mode"])
    config = GatewayConfig.from_mapping(data)
    assert isinstance(config, GatewayConfig)
    if "bind" not in data:
        config.bind = [DEFAULT_BIND]
    if "backlog" not in data:
        # Hypercorn's 100 is overrun by a reconnect storm (a deploy, a network blip): the
        # kernel drops the SYNs and the clients retry after 1, 3, 7, 15 s.
        config.backlog = DEFAULT_BACKLOG
    if "alpn_protocols" not in data:
        # Browsers negotiate HTTP/2 over TLS when offered and then open WebSockets with
        # extended CONNECT (RFC 8441), which carries no Upgrade header: Engine.IO refuses it and
        # the client falls back to polling, or fails with transports: ["websocket"]. The Node
        # server spoke HTTP/1.1 only; so do we, unless the file asks for more.
        config.alpn_protocols = ["http/1.1"]
    _check_tls_files(config)
    return config


def _verify_mode(value: Any) -> ssl.VerifyMode:
    try:
        if isinstance(value, str):
            return ssl.VerifyMode[value.upper()]
        return ssl.VerifyMode(value)
    except (KeyError, ValueError):
        raise SettingsError(
            f"invalid Hypercorn setting verify_mode={value!r}: "
            "use CERT_NONE, CERT_OPTIONAL or CERT_REQUIRED"
        ) from None


def _check_tls_files(config: Config) -> None:
    if (config.certfile is None) != (config.keyfile is None):
        raise SettingsError("Hypercorn settings certfile and keyfile must be given together")
    for key in ("certfile", "keyfile", "ca_certs"):
        value = getattr(config, key)
        if value is not None and not Path(value).is_file():
            raise SettingsError(f"Hypercorn setting {key}: file not found: {value}")
