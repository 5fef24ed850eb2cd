"""The server API: ``/api/v1/…`` for the apps' backends (see docs/api.md)."""
