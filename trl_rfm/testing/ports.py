"""A free TCP port on the loopback interface, for the rendezvous of multi-process tests (`accelerate launch`,
`torchrun`) that must not collide with another run on the same machine."""

import socket


def free_local_port() -> int:
    """A port the operating system reports free on 127.0.0.1 right now (released before returning)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
