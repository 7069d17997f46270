"""The emulator's parties on hosts of their own: sockets in Linux network namespaces.

One emulator process runs every party, so on its own all their traffic crosses loopback.
A scenario can instead place addresses in network namespaces (`Scenario.namespaces`),
joined by real links (a veth pair, VLAN sub-interfaces, a bridge), to capture what a
server's interfaces show. A socket belongs for life to the namespace it was created in,
and the namespace is a property of the thread: the emulator's single asyncio thread enters
an address's namespace only to create that address's socket, and goes back at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000  # setns(2): the descriptor must be a network namespace
NETNS_DIR = "/var/run/netns"  # where `ip netns add NAME` keeps NAME

_hosts: dict[str, int] = {}  # address -> descriptor of its namespace, while a run lasts
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def hosting(namespaces: tuple[tuple[str, str], ...]) -> Iterator[None]:
    """While the block runs, sockets for these addresses are made in their namespaces
    (pairs of address and `ip netns` name)."""
    fds: dict[str, int] = {}
    try:
        for address, name in namespaces:
            if name not in fds:
                fds[name] = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
            _hosts[address] = fds[name]
        yield
    finally:
        for address, _ in namespaces:
            _hosts.pop(address, None)
        for fd in fds.values():
            os.close(fd)


def tcp_socket(address: str) -> socket.socket:
    """A TCP socket for `address`, in the namespace that holds it (or this one)."""
    host = _hosts.get(address)
    if host is None:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(host)
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            _setns(home)
    finally:
        os.close(home)
