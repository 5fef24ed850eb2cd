"""Plain HTTP against a gateway's operational routes: /health, /ready and /metrics."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request


def get(url: str) -> tuple[int, str]:
    """Status and body; an error status is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def scrape(url: str) -> str:
    """The /metrics text of the gateway at *url*, fetched off the event loop."""
    return (await asyncio.to_thread(get, url + "/metrics"))[1]


def sample(metrics: str, name: str) -> float:
    """The value of one sample line of a Prometheus text exposition."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the scrape")
