"""nftables rules that drop callback SYNs (failure `callback_dropped`).

The rules sit on the input hook: a loopback packet passes the capture tap on its way out,
so the capture holds every SYN and its retransmissions, and none is ever answered.
"""

from __future__ import annotations

import asyncio
import subprocess

TABLE = "jsdemu"


class FirewallError(RuntimeError):
    pass


async def _nft(namespace: str | None, *args: str, check: bool = True) -> None:
    """nft, in a network namespace (`ip netns` name) when one is given."""
    where = ("ip", "netns", "exec", namespace) if namespace is not None else ()
    process = await asyncio.create_subprocess_exec(
        *where, "nft", *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, stderr = await process.communicate()
    if check and process.returncode != 0:
        raise FirewallError(f"nft {' '.join(args)}: {stderr.decode().strip()}")


class Firewall:
    """The dedicated table `inet jsdemu`; set up once per run, always removed afterwards.

    Blocked endpoints live in a set, so a port can be unblocked when its task ends and a
    later task that gets the same port is not dropped too. The table is where the
    controllers are: `namespace_of` maps each one's address to its network namespace
    (`ip netns` name; None: this host's).
    """

    def __init__(self, namespace_of: dict[str, str | None]) -> None:
        self._namespace_of = namespace_of

    def _namespaces(self) -> set[str | None]:
        return set(self._namespace_of.values())

    async def setup(self) -> None:
        for ns in self._namespaces():
            await _nft(ns, "delete", "table", "inet", TABLE, check=False)  # left by a crash
            await _nft(ns, "add", "table", "inet", TABLE)
            blocked = "{ type ipv4_addr . inet_service; }"
            await _nft(ns, "add", "set", "inet", TABLE, "blocked", blocked)
            chain = "{ type filter hook input priority filter; policy accept; }"
            await _nft(ns, "add", "chain", "inet", TABLE, "input", chain)
            await _nft(
                ns, "add", "rule", "inet", TABLE, "input",
                "ip", "daddr", ".", "tcp", "dport", "@blocked",
                "tcp", "flags", "&", "(syn|ack)", "==", "syn", "drop",
            )  # fmt: skip

    async def drop_syns(self, ip: str, port: int) -> None:
        ns = self._namespace_of.get(ip)
        await _nft(ns, "add", "element", "inet", TABLE, "blocked", f"{{ {ip} . {port} }}")

    async def allow(self, ip: str, port: int) -> None:
        ns = self._namespace_of.get(ip)
        await _nft(ns, "delete", "element", "inet", TABLE, "blocked", f"{{ {ip} . {port} }}")

    async def teardown(self) -> None:
        for ns in self._namespaces():
            await _nft(ns, "delete", "table", "inet", TABLE, check=False)
