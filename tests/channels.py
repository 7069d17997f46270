"""Hand-built connections and channels (a started command, a callback) for correlation tests."""

from __future__ import annotations

from jsdissect.correlate import Channel
from jsdissect.protocol import command as cmd
from jsdissect.tcp import Connection, Endpoint

S = 1_000_000  # µs per second
C_IP, R_IP = "10.1.0.10", "10.1.0.20"


def conn(cid: str, client: Endpoint, server: Endpoint, syn: int, **kw) -> Connection:
    base = dict(
        id=cid,
        client=client,
        server=server,
        handshake_seen=True,
        first_ts=syn,
        last_ts=syn + 10 * S,
        syn=syn,
        syn_count=1,
        synack=syn + 100,
        established=syn + 200,
        refused=None,
        client_fin=None,
        server_fin=None,
        rst=None,
        rst_by=None,
        closed=None,
        first_data=None,
        last_data=None,
        bytes_c2s=0,
        bytes_s2c=0,
        packets=3,
        retransmissions=0,
        gaps=0,
        gap_bytes=0,
        state="open",
    )
    base.update(kw)
    return Connection(**base)


def command(cid: str, cport: int, start: int, tcp_port: int | None, process_id: str) -> Channel:
    c = conn(cid, Endpoint(C_IP, cport), Endpoint(R_IP, 4455), start - 1000)
    where = dict(conn=cid, direction=0, offset=0, start=start, end=start)
    answer = dict(conn=cid, direction=1, offset=0, start=start + 500, end=start + 600)
    events = (
        cmd.StartRemoteTask(
            **where,
            tcp_port=tcp_port,
            kind=None,
            java_options=None,
            java_classpath=None,
            ip_address=None,
        ),
        cmd.ProcessAnswer(
            **answer,
            command="remote_scheduler.start_remote_task",
            command_offset=0,
            time=None,
            process_id=process_id,
            pid=None,
        ),
    )
    return Channel(c, "cmd", events)


def callback(cid: str, src: Endpoint, dst: Endpoint, syn: int) -> Channel:
    return Channel(conn(cid, src, dst, syn, bytes_c2s=10, bytes_s2c=10), "api", (), dst, src)
