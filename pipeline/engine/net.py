"""Local ports and servers: a free port, waiting for a server to answer."""
from __future__ import annotations


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens on (host, port), so a server started there would fail to bind."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
            return False
        except OSError:
            return True


def wait_for(check, timeout: float, what: str) -> None:
    import time

    from pipeline.errors import PipelineError

    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(1)
    raise PipelineError(f"timed out after {timeout:.0f} s waiting for {what}")


def http_answers(url: str) -> bool:
    """Whether a server answers at `url` (a 401 counts: the dashboard is up and asks for the token)."""
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=2)
        return True
    except Exception as exc:
        return getattr(exc, "code", None) == 401
