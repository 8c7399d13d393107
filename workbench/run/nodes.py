"""A multi-node run's control store: a c10d TCPStore that node 0's `workbench run` hosts at the
rendezvous endpoint for the whole run, and every other node's `workbench run` joins.

What travels through it (keys under "workbench/"):
- at rendezvous: each node's settings (`settings`), compared by node 0; one line refuses a mismatch on
  every node, before anything is written;
- each round: node 0 announces the round's request (`Link.announce`), starts its own torchrun; every
  other node, waiting for just that (run/follow.py), starts its torchrun with the same request, so all
  nodes measure the same configuration in lock-step, then says how its torchrun ended (`Link.ended`);
- at the end: "done" (`Link.finish`), which ends the followers.
The followers wait on the store without a timeout of their own: node 0 may be busy for minutes between
rounds (the one-process baseline, judging), and a node 0 that is gone closes the connection at once.

Inside a round torchrun does the launching and its own rendezvous (launch/nodes.py); the trace files
of other nodes reach node 0 through the process group (measure/distributed.gather_files).
"""
from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping

import torch
from torch.distributed import TCPStore

from workbench import __version__
from workbench.config import RunConfig
from workbench.errors import UsageError
from workbench.launch import Outcome, RoundSpec, failure_text, procs
from workbench.launch.launchers import Torchrun
from workbench.launch.nodes import Nodes

PREFIX = "workbench/"
POLL_S = 0.2
GOODBYE_S = 10.0         # how long node 0 stays for a follower to read its last word
CONNECT_ATTEMPT_S = 2.0
HEARTBEAT_S = 2.0         # a follower says it is alive this often, from a thread of its own
SILENT_AFTER_S = 15.0     # node 0 counts a follower gone after this long without a heartbeat   # one try at node 0's store; tried again until --rdzv-timeout
_MUTE_LOCK = threading.Lock()
# Settings a node may hold on its own: only node 0 names and writes the run.
NODE_LOCAL = ("run_name", "reports_dir", "profiles_dir")


class NodeLost(UsageError):
    """A node lost contact with the run mid-way (node 0 gone, or a refused rendezvous said late): exit 1."""

    exit_code = 1


def settings(cfg: RunConfig, nproc: int, nodes: Nodes) -> dict:
    """What must be the same on every node: the measured configuration, processes, nodes, versions."""
    config = {key: value for key, value in cfg.to_dict().items() if key not in NODE_LOCAL}
    return {"nnodes": nodes.nnodes, "nproc": nproc, "workbench": __version__, "torch": torch.__version__, **config}


def first_difference(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> str | None:
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key):
            return f"{key}={theirs.get(key)!r} there, {key}={ours.get(key)!r} on node 0"
    return None


@contextmanager
def native_logs_muted() -> Iterator[None]:
    """c10d's C++ side prints its retries and lost connections with native stack frames to fd 2; the
    Python error that follows says it in one line, so those frames are kept off the console. One
    thread at a time (the heartbeat has its own): two overlapping windows would restore each other's
    /dev/null and silence the process for good."""
    with _MUTE_LOCK:
        saved = os.dup(2)
        try:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@dataclass
class Link:
    """This node's connection to the control store, and node 0's count of rounds."""

    store: TCPStore
    nodes: Nodes
    rounds: int = 0
    lost: str | None = None                 # node 0: why a follower is gone (later rounds fail at once)
    finished: bool = False
    beats: dict = field(default_factory=dict)   # node 0: each follower's last heartbeat and when it changed

    # --- the store, in one place -------------------------------------------------------------------
    def put(self, key: str, value: Any) -> None:
        self._guarded(lambda: self.store.set(PREFIX + key, json.dumps(value)))

    def get(self, key: str, within_s: float | None) -> Any:
        """The key's value once it is there; None when within_s passed first (None: wait as long as it takes)."""
        deadline = None if within_s is None else time.monotonic() + within_s
        while True:
            found = self._guarded(lambda: self.store.check([PREFIX + key]) and self.store.get(PREFIX + key))
            if found:
                return json.loads(found)
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(POLL_S)

    def count(self, key: str) -> int:
        return self._guarded(lambda: self.store.add(PREFIX + key, 1))

    def _guarded(self, call: Callable[[], Any]) -> Any:
        """One store call, its native retry frames kept off the console; a lost store is NodeLost (one
        line and exit 1), never a DistNetworkError traceback."""
        try:
            with native_logs_muted():
                return call()
        except RuntimeError as error:  # DistNetworkError: the other end is gone
            raise NodeLost(f"lost contact with the control store at {self.nodes.endpoint} "
                           f"({str(error).splitlines()[0][:160]})") from None

    # --- the rounds --------------------------------------------------------------------------------
    def announce(self, request: RoundSpec, timeout_s: float) -> int:
        index, self.rounds = self.rounds, self.rounds + 1
        self.put(f"round/{index}", {"request": request.to_json(), "timeout_s": timeout_s})
        return index

    def ended(self, index: int, code: int | None) -> None:
        self.put(f"end/{index}/{self.nodes.node_rank}", {"code": code})

    def ends(self, index: int) -> dict[int, dict | None]:
        """Each follower's end of round `index`: waited for up to the rendezvous timeout, less for a
        follower whose heartbeat stopped (None: no end came)."""
        deadline, found = time.monotonic() + self.nodes.timeout_s, {}
        for node in range(1, self.nodes.nnodes):
            end = None
            while end is None and time.monotonic() < deadline and self.silent(node) is None:
                end = self.get(f"end/{index}/{node}", 1.0)
            found[node] = end
        return found

    def silent(self, node: int) -> str | None:
        """Node 0: why follower `node` counts as gone (its heartbeat stopped), or None while it beats."""
        beat = self.get(f"alive/{node}", 0.0)
        last, since = self.beats.get(node, (None, time.monotonic()))
        if beat != last:
            last, since = beat, time.monotonic()
        self.beats[node] = (last, since)
        quiet = time.monotonic() - since
        return None if quiet < SILENT_AFTER_S else f"no heartbeat for {quiet:.0f} s"

    def first_silent(self) -> tuple[int, str] | None:
        """The first follower gone silent, and for how long, or None."""
        for node in range(1, self.nodes.nnodes):
            why = self.silent(node)
            if why:
                return node, why
        return None

    def finish(self, why: str | None = None) -> None:
        """Node 0: no more rounds (why: node 0 stopped on an error); the followers read it and leave
        (waited for a few seconds)."""
        if self.finished:
            return
        self.finished = True
        try:
            self.put(f"round/{self.rounds}", {"done": True, "why": why})
            for node in range(1, self.nodes.nnodes):
                self.get(f"bye/{node}", GOODBYE_S)
        except NodeLost:  # a follower that is gone needs no goodbye
            pass


def host(nodes: Nodes) -> Link:
    """Node 0: the control store at the endpoint's port, for the whole run."""
    try:
        with native_logs_muted():
            store = TCPStore(nodes.host, nodes.port, is_master=True, wait_for_workers=False,
                             timeout=dt.timedelta(seconds=nodes.timeout_s))
    except RuntimeError as error:
        raise UsageError(f"cannot host the rendezvous at {nodes.endpoint} ({str(error).splitlines()[0][:160]}); "
                         "allowed: a free port on this node (node 0), and PORT+1 free too") from None
    return Link(store, nodes)


def join(nodes: Nodes) -> Link:
    """Another node: connect to node 0's control store, trying until --rdzv-timeout has passed. Short
    attempts, so the wait ends near the deadline (one long attempt overshoots it by its retry delay)."""
    deadline = time.monotonic() + nodes.timeout_s
    while True:
        attempt = max(1.0, min(CONNECT_ATTEMPT_S, deadline - time.monotonic()))
        try:
            with native_logs_muted():
                store = TCPStore(nodes.host, nodes.port, is_master=False, timeout=dt.timedelta(seconds=attempt))
            store.set_timeout(dt.timedelta(seconds=nodes.timeout_s))
            return Link(store, nodes)
        except RuntimeError:
            if time.monotonic() + 0.5 >= deadline:
                break
    raise UsageError(f"cannot reach the rendezvous at {nodes.endpoint} within {nodes.timeout_s:g} s "
                     f"(--rdzv-timeout): is node 0 running `workbench run --nnodes {nodes.nnodes} --node-rank 0 "
                     f"--rdzv-endpoint {nodes.endpoint}`?")


def start_heartbeat(nodes: Nodes) -> threading.Thread:
    """A follower's heartbeat, on a connection of its own: node 0 stops a round whose other node went
    silent instead of leaving its ranks in a collective until their own timeout."""
    # Not muted: muting redirects the process's fd 2, and from this thread it could land while the main
    # thread starts a round's torchrun, which would then inherit /dev/null as its stderr for the round.
    # A failed beat prints c10d's frames once, when node 0 is gone, and the thread ends.
    def beat() -> None:
        try:
            store = TCPStore(nodes.host, nodes.port, is_master=False, timeout=dt.timedelta(seconds=nodes.timeout_s))
            for count in itertools.count():
                store.set(f"{PREFIX}alive/{nodes.node_rank}", json.dumps(count))
                time.sleep(HEARTBEAT_S)
        except RuntimeError:  # node 0 is gone: the main thread finds out and says so
            return
    thread = threading.Thread(target=beat, name="workbench-heartbeat", daemon=True)
    thread.start()
    return thread


def check_in_leader(link: Link, ours: dict) -> None:
    """Node 0: every other node's settings within the timeout, each compared with ours; a verdict each."""
    nodes, deadline = link.nodes, time.monotonic() + link.nodes.timeout_s
    seen = {node: link.get(f"hello/{node}", max(0.0, deadline - time.monotonic())) for node in range(1, nodes.nnodes)}
    missing = [str(node) for node, theirs in seen.items() if theirs is None]
    problems = {node: first_difference(ours, theirs) for node, theirs in seen.items() if theirs is not None}
    if missing:
        why = (f"node {', '.join(missing)} of {nodes.nnodes} did not join the rendezvous at {nodes.endpoint} within "
               f"{nodes.timeout_s:g} s (--rdzv-timeout); allowed: every node started within that time")
    else:
        bad = next(((node, text) for node, text in problems.items() if text), None)
        why = None if bad is None else (f"node {bad[0]}'s settings differ from node 0's: {bad[1]}; allowed: the same "
                                        "settings on every node (the same command, but --node-rank)")
    joined = [node for node, theirs in seen.items() if theirs is not None]
    for node in joined:
        link.put(f"verdict/{node}", why or "")
    if why:
        for node in joined:  # the store closes when we leave: each refused node reads its verdict first
            link.get(f"heard/{node}", GOODBYE_S)
        raise UsageError(why)


def check_in_follower(link: Link, ours: dict) -> None:
    """Another node: our settings to node 0, then its verdict (one line on every node when refused)."""
    node = link.nodes.node_rank
    if link.count(f"joined/{node}") > 1:
        raise UsageError(f"--node-rank {node} has already joined the rendezvous at {link.nodes.endpoint}; "
                         f"allowed: each of 1..{link.nodes.nnodes - 1} on one node")
    link.put(f"hello/{node}", ours)
    verdict = link.get(f"verdict/{node}", None)
    link.put(f"heard/{node}", True)
    if verdict:
        raise UsageError(verdict)


@dataclass
class AcrossNodes:
    """The launcher of a multi-node run's rounds on node 0: each round announced, then torchrun here
    (this node's share); a follower that failed or went silent is named in the round's failure."""

    link: Link
    inner: Torchrun
    name: str = field(default="torchrun on several nodes")

    def __post_init__(self) -> None:
        self.inner.watch = self.gone

    def gone(self) -> str | None:
        """Why the run lost a node (kept: every later round fails at once), or None while all answer."""
        silent = None if self.link.lost else self.link.first_silent()
        if silent is not None:
            self.link.lost = (f"{self._where(silent[0])} stopped answering ({silent[1]}): it died or lost "
                              "contact with node 0")
        return self.link.lost

    def run(self, request: RoundSpec, timeout_s: float | None = None, env: Mapping[str, str] | None = None) -> Outcome:
        timeout_s = timeout_s or procs.stage_timeout_s()
        if self.gone():
            return Outcome({}, 1, timeout_s, error=self.link.lost)
        index = self.link.announce(request, timeout_s)
        outcome = self.inner.run(request, timeout_s, env)
        if outcome.stopped is not None:  # stopped here: say so at once (finish() tells the others)
            return outcome
        trouble = self.link.lost or self._followers(index, timeout_s)
        if trouble is None or (outcome.reports and all(report.measured for report in outcome.reports.values())):
            return outcome
        kept = {key: report for key, report in outcome.reports.items() if report.measured}
        return replace(outcome, reports=kept, error=trouble)

    def _followers(self, index: int, timeout_s: float) -> str | None:
        """What went wrong on the other nodes in round `index`, in words naming the node and its ranks."""
        for node, end in self.link.ends(index).items():
            where = self._where(node)
            if end is None:
                self.link.lost = f"{where} stopped answering in round {index + 1}: it died or lost contact with node 0"
                return self.link.lost
            if end["code"] != 0:
                return f"{where} failed: {failure_text(end['code'], timeout_s)}"
        return None

    def _where(self, node: int) -> str:
        ranks = self.link.nodes.ranks(self.inner.nproc, node)
        return f"node {node} (ranks {ranks.start}-{ranks.stop - 1})"
