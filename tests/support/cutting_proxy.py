"""A loopback TCP proxy whose connections can be cut mid-stream: a real network failure, on demand.

Put it between a client and a real server (here: the S3-compatible server). `cut_after(n)` lets n more
client→server bytes through, then closes every connection at once (the request in flight is torn
mid-body, exactly as when a link or the server dies) and resets every new connection until `heal()`.
"""

from __future__ import annotations

import socket
import struct
import threading


class CuttingProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._budget: int | None = None  # client→server bytes left before the cut; None: unlimited
        self._cut = False
        self._closed = False
        self.cuts = 0  # how many times the link went down
        self.refused = 0  # connections reset while cut (each one a client retry)
        threading.Thread(target=self._accept, daemon=True, name="cutting-proxy").start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, n_bytes: int) -> None:
        """Arm: after `n_bytes` more client→server bytes, cut every connection."""
        with self._lock:
            self._budget = n_bytes

    def heal(self) -> None:
        with self._lock:
            self._cut, self._budget = False, None

    @property
    def is_cut(self) -> bool:
        return self._cut

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self._cut_all()

    # ------------------------------------------------------------------ internals

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut:
                self.refused += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream:
                    with self._lock:
                        if self._budget is not None:
                            allowed = max(0, self._budget)
                            self._budget -= len(data)
                            if self._budget < 0:
                                data = data[:allowed]
                                cut_now = True
                            else:
                                cut_now = False
                        else:
                            cut_now = False
                    if data:
                        dst.sendall(data)
                    if cut_now:
                        self._cut_all()
                        return
                else:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _cut_all(self) -> None:
        with self._lock:
            if not self._closed:
                self.cuts += 1
            self._cut, self._budget = True, None
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            _reset(sock)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), like a dead peer, rather than a polite FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)  # wakes a pump thread blocked in recv() on this socket
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
