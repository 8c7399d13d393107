"""Where this node stands in a multi-node run, checked, and torchrun's flags for it (no torch here).

One `workbench run` per node. Node 0 runs the ladder; every other node follows it (run/follow.py).
Two ports on node 0, both derived from `--rdzv-endpoint HOST:PORT`:
- PORT: the run's control store, a c10d TCPStore that node 0's `workbench run` hosts for the whole
  run (settings check at rendezvous, each round's request, each node's end of round; run/nodes.py);
- PORT + 1: torchrun's own rendezvous for each round, the static backend, hosted by node 0's torchrun.
  The static backend, not c10d's dynamic one, because only the static one honours --node-rank: node k
  holds ranks k*nproc .. k*nproc+nproc-1, so node 0 holds rank 0, the one that reports, and a rank
  that died is named by its node. Its store is fresh each round, so a round cannot meet the last one's.
"""
from __future__ import annotations

import ipaddress
import math
import re
import shlex
import socket
from dataclasses import dataclass

from workbench.errors import UsageError

DEFAULT_RDZV_TIMEOUT_S = 60.0
# torchrun flags the workbench sets itself; a pass-through that names one would contradict it.
OWN_TORCHRUN_FLAGS = ("nnodes", "node-rank", "node_rank", "nproc-per-node", "nproc_per_node", "rdzv-backend",
                      "rdzv_backend", "rdzv-endpoint", "rdzv_endpoint", "rdzv-id", "rdzv_id", "rdzv-conf",
                      "rdzv_conf", "standalone", "master-addr", "master_addr", "master-port", "master_port",
                      "max-restarts", "max_restarts", "module", "m", "no-python", "no_python")
_HOST = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)$")


@dataclass(frozen=True)
class Nodes:
    """This node's place in the run: one node (the default) or node_rank of nnodes, meeting at host:port."""

    nnodes: int = 1
    node_rank: int = 0
    host: str = ""
    port: int = 0
    timeout_s: float = DEFAULT_RDZV_TIMEOUT_S
    torchrun_args: tuple[str, ...] = ()

    @property
    def multi(self) -> bool:
        return self.nnodes > 1

    @property
    def leader(self) -> bool:
        """Node 0: it runs the ladder and hosts the control store."""
        return self.node_rank == 0

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def leader_here(self) -> bool:
        """Whether node 0 is this machine (its endpoint names this host): then node 0's machine lock
        already covers it, and a follower taking it too would wait for node 0 forever."""
        return self.multi and is_this_machine(self.host)

    def ranks(self, nproc: int, node: int) -> range:
        """The global ranks node `node` holds (the static rendezvous orders them by node rank)."""
        return range(node * nproc, (node + 1) * nproc)


def is_this_machine(host: str) -> bool:
    """A loopback address, this host's name, or a name that resolves to one of its addresses."""
    try:
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:  # a name, not an address
        pass
    try:
        names = {socket.gethostname(), socket.getfqdn()}
        if host in names:
            return True
        ours = set(socket.gethostbyname_ex(socket.gethostname())[2]) | {"127.0.0.1"}
        return bool(set(socket.gethostbyname_ex(host)[2]) & ours)
    except OSError:  # unresolvable here: not this machine (the rendezvous will say the rest)
        return False


def parse_endpoint(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) -> (host, port); a one-line UsageError otherwise."""
    host, _, port = (text or "").strip().rpartition(":")
    allowed = "allowed: HOST:PORT, e.g. node0.cluster:29400 or 10.0.0.5:29400 (PORT 1024..65534; PORT+1 is used too)"
    if not host or not _HOST.match(host) or not port.isdigit():
        raise UsageError(f"--rdzv-endpoint {text!r} is malformed; {allowed}")
    if not 1024 <= int(port) <= 65534:
        raise UsageError(f"--rdzv-endpoint {text!r}: port {port} is out of range; {allowed}")
    return host.strip("[]"), int(port)


def check(nnodes: int | None, node_rank: int | None, endpoint: str | None, timeout_s: float | None,
          torchrun_args: str | None) -> Nodes:
    """The node flags of `workbench run`, checked together, before anything is written."""
    nnodes = 1 if nnodes is None else nnodes
    if nnodes < 1:
        raise UsageError(f"--nnodes {nnodes} is too small; allowed: 1 or more (one `workbench run` per node)")
    node_rank = 0 if node_rank is None else node_rank
    if not 0 <= node_rank < nnodes:
        raise UsageError(f"--node-rank {node_rank} is out of range for --nnodes {nnodes}; allowed: 0..{nnodes - 1}")
    timeout_s = DEFAULT_RDZV_TIMEOUT_S if timeout_s is None else timeout_s
    if not (math.isfinite(timeout_s) and 1 <= timeout_s <= 86400):
        raise UsageError(f"--rdzv-timeout {timeout_s:g} is not allowed; allowed: 1..86400 seconds "
                         f"(default {DEFAULT_RDZV_TIMEOUT_S:.0f})")
    if nnodes == 1:
        if endpoint or torchrun_args or node_rank:
            raise UsageError("--rdzv-endpoint, --node-rank and --torchrun-args are for multi-node runs; "
                             "allowed with --nnodes 2 or more")
        return Nodes(timeout_s=timeout_s)
    if not endpoint:
        raise UsageError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (node 0's address, the same on every node)")
    host, port = parse_endpoint(endpoint)
    return Nodes(nnodes, node_rank, host, port, timeout_s, check_torchrun_args(torchrun_args))


def check_torchrun_args(text: str | None) -> tuple[str, ...]:
    """torchrun's own flags passed through (e.g. "--local-addr 10.0.0.5"); never the ones set here."""
    try:
        words = tuple(shlex.split(text or ""))
    except ValueError as error:
        raise UsageError(f"--torchrun-args {text!r} cannot be split ({error}); allowed: torchrun flags, quoted as in a shell")
    for word in words:
        flag = word.lstrip("-").split("=", 1)[0]
        if word.startswith("-") and flag in OWN_TORCHRUN_FLAGS:
            raise UsageError(f"--torchrun-args names {word!r}, which the workbench sets itself; allowed: other "
                             "torchrun flags (--local-addr, --log-dir, --monitor-interval, ...)")
    return words


def torchrun_flags(nodes: Nodes, nproc: int) -> list[str]:
    """torchrun's flags for one round: standalone on one node; the static rendezvous at PORT+1 on several."""
    if not nodes.multi:
        return ["--standalone", f"--nproc_per_node={nproc}"]
    return [f"--nnodes={nodes.nnodes}", f"--node_rank={nodes.node_rank}", f"--nproc_per_node={nproc}",
            "--rdzv_backend=static", f"--rdzv_endpoint={_bracketed(nodes.host)}:{nodes.port + 1}",
            f"--rdzv_conf=timeout={int(math.ceil(nodes.timeout_s))}", "--max_restarts=0", *nodes.torchrun_args]


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
