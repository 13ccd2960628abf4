"""Imported at start-up by every Python process the tests launch (PYTHONPATH), and by the
test process itself: any connection to another machine fails at once, so no test can
download anything, whatever network the machine has."""
import socket

_connect = socket.socket.connect


def _local_only(self, address):
    if self.family == socket.AF_UNIX or str(address[0]).startswith(("127.", "::1", "localhost")):
        return _connect(self, address)
    raise OSError(f"tests run offline: refused connection to {address}")


socket.socket.connect = _local_only
