"""A small TCP proxy on loopback that the fault tests put between an edge and the service.

Toxiproxy is not available here, so this one does the two faults the tests need: ``drop``
(every open connection is cut and new ones are closed as soon as they are accepted, as when a
link goes down) and ``delay`` (each chunk waits ``delay`` seconds before it is passed on, as on
a slow link). ``pass`` forwards as is.
"""

from __future__ import annotations

import socket
import threading
import time

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target`` until :meth:`close`."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.mode = "pass"
        self.delay = 0.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    def set(self, mode: str, delay: float = 0.0) -> None:
        """Switch to ``pass``, ``drop`` or ``delay`` (by ``delay`` seconds a chunk); ``drop`` cuts open connections."""
        if mode not in ("pass", "drop", "delay"):
            raise ValueError(f"unknown proxy mode {mode!r}")
        self.mode, self.delay = mode, delay
        if mode == "drop":
            with self._lock:
                cut, self._open = list(self._open), set()
            for conn in cut:
                _close(conn)

    def close(self) -> None:
        self.set("drop")
        _close(self._listener)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self.mode == "drop":
                _close(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                if self.mode == "delay":
                    time.sleep(self.delay)
                if self.mode == "drop":
                    break
                sink.sendall(chunk)
        except OSError:
            pass  # cut by a drop, or by the other side
        finally:
            with self._lock:
                self._open.difference_update((source, sink))
            _close(source)
            _close(sink)


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more
    conn.close()
