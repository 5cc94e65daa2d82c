"""Reading a worker's Prometheus endpoint in tests."""

from __future__ import annotations

import urllib.request


def scrape(port: int) -> dict[str, float]:
    """Prometheus text format on 127.0.0.1:``port`` -> {"name{labels}": value} (comments skipped)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
