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


async def _nft(*args: str, check: bool = True) -> None:
    process = await asyncio.create_subprocess_exec(
        "nft", *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, stderr = await process.communicate()
    if check and process.returncode != 0:
        raise FirewallError(f"nft {' '.join(args)}: {stderr.decode().strip()}")


class Firewall:
    """The dedicated table `inet jsdemu`; set up once per run, always removed afterwards.

    Blocked endpoints live in a set, so a port can be unblocked when its task ends and a
    later task that gets the same port is not dropped too.
    """

    async def setup(self) -> None:
        await _nft("delete", "table", "inet", TABLE, check=False)  # left over from a crash
        await _nft("add", "table", "inet", TABLE)
        await _nft("add", "set", "inet", TABLE, "blocked", "{ type ipv4_addr . inet_service; }")
        chain = "{ type filter hook input priority filter; policy accept; }"
        await _nft("add", "chain", "inet", TABLE, "input", chain)
        await _nft(
            "add", "rule", "inet", TABLE, "input",
            "ip", "daddr", ".", "tcp", "dport", "@blocked",
            "tcp", "flags", "&", "(syn|ack)", "==", "syn", "drop",
        )  # fmt: skip

    async def drop_syns(self, ip: str, port: int) -> None:
        await _nft("add", "element", "inet", TABLE, "blocked", f"{{ {ip} . {port} }}")

    async def allow(self, ip: str, port: int) -> None:
        await _nft("delete", "element", "inet", TABLE, "blocked", f"{{ {ip} . {port} }}")

    async def teardown(self) -> None:
        await _nft("delete", "table", "inet", TABLE, check=False)
