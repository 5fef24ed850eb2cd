"""TLS for WS-Hub: validated certificate material and hot reload without dropping connections.

See ``docs/tls-reload.md`` for the measurements behind the design.
"""

from .context import build_context
from .devcert import ensure_dev_pair, generate_dev_pair
from .inspect import InspectError, inspect_files
from .material import (
    CertInfo,
    InvalidMaterial,
    RawMaterial,
    TlsFiles,
    ValidatedMaterial,
    read_material,
    validate,
)
from .reloader import Listener, ReloadOutcome, TlsReloader

__all__ = [
    "CertInfo",
    "InspectError",
    "InvalidMaterial",
    "Listener",
    "RawMaterial",
    "ReloadOutcome",
    "TlsFiles",
    "TlsReloader",
    "ValidatedMaterial",
    "build_context",
    "ensure_dev_pair",
    "generate_dev_pair",
    "inspect_files",
    "read_material",
    "validate",
]
