"""A node other than node 0 in a multi-node run: it follows node 0's rounds until node 0 says done.

It joins the control store (run/nodes.py; one line and exit 2 when node 0 cannot be reached within
--rdzv-timeout), has its settings checked against node 0's, then loops: wait for the next round's
request, run this node's torchrun processes with it (they join node 0's at the round's rendezvous),
say how they ended. It writes no run folder: its ranks' traces go to node 0 through the process group.
"""
from __future__ import annotations

import itertools
from typing import Callable

from workbench.config import RunConfig
from workbench.launch import RoundSpec
from workbench.launch.launchers import Torchrun
from workbench.launch.nodes import Nodes
from workbench.progress import stderr_log
from workbench.run import nodes as links
from workbench.training.data import load_configured


def follow(cfg: RunConfig, nproc: int, nodes: Nodes, log: Callable[[str], None] = stderr_log) -> int:
    """Join node 0's run and measure every round it announces; 0 once node 0 finished."""
    link = links.join(nodes)
    links.start_heartbeat(nodes)
    links.check_in_follower(link, links.settings(cfg, nproc, nodes))
    log(f"node {nodes.node_rank} of {nodes.nnodes}: joined node 0 at {nodes.endpoint}; "
        f"{nproc} process{'es' if nproc > 1 else ''} here follow its rounds")
    launcher = Torchrun(nproc=nproc, nodes=nodes)
    for index in itertools.count():
        order = link.get(f"round/{index}", None)
        if order.get("done"):
            link.put(f"bye/{nodes.node_rank}", True)
            if order.get("why"):
                raise links.NodeLost(f"node 0 stopped the run: {order['why']}")
            log(f"node 0 finished the run after {index} round{'s' if index != 1 else ''}; results are on node 0")
            return 0
        request = RoundSpec.from_json(order["request"])
        if index == 0:
            prepare_data(request, log)
        outcome = launcher.run(request, order["timeout_s"])
        link.ended(index, outcome.code)
        if outcome.stopped is not None:
            raise outcome.stopped
        log(f"round {index + 1}: {', '.join(side.stage for side in request.sides.values())} "
            f"({'done' if outcome.code == 0 else f'exit status {outcome.code}'})")
    return 0


def prepare_data(request: RoundSpec, log: Callable[[str], None]) -> None:
    """The data node 0 measures on, here too (written once, before this node's ranks read it): node 0
    has prepared its own by the time it announces the first round, so a shared folder is not written twice."""
    config = RunConfig(**request.configs()[0])
    load_configured(config, log=log)
