"""Is a download host reachable? One bounded probe shared by dataset and checkpoint downloads.

Offline machines (cluster nodes, sandboxes) would otherwise hang in DNS or TCP connect for
minutes before torchvision / gdown give up with a traceback; a 3 s probe lets the caller
print a one-line "place the file at ..." error instead.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

OFFLINE_ENV = "MARGINBENCH_OFFLINE"  # set to 1: never try to download anything
NETWORK_TIMEOUT_S = 3.0


def offline_requested() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0", "false", "False")


def host_reachable(host: str, timeout: float = NETWORK_TIMEOUT_S) -> bool:
    """Can ``host``:443 be connected to within ``timeout`` seconds (DNS + TCP connect)?"""
    if offline_requested() or not host:
        return False
    result = {"ok": False}

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    # getaddrinfo ignores socket timeouts; a daemon thread bounds the whole probe.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return result["ok"]


def url_reachable(url: str, timeout: float = NETWORK_TIMEOUT_S) -> bool:
    """``host_reachable`` for the host of ``url``."""
    return host_reachable(urlparse(url).hostname or "", timeout)
