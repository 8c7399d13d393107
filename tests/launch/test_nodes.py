"""A node's place in a multi-node run: the flags checked before anything is written, torchrun's flags."""
from __future__ import annotations

import pytest

from workbench.errors import UsageError
from workbench.launch.nodes import Nodes, check, parse_endpoint, torchrun_flags


@pytest.mark.parametrize("flags, needles", [
    ((0, None, None, None, None), ["--nnodes 0", "1 or more"]),
    ((2, 2, "h:29400", None, None), ["--node-rank 2", "0..1"]),
    ((2, -1, "h:29400", None, None), ["--node-rank -1", "0..1"]),
    ((2, 0, None, None, None), ["--rdzv-endpoint HOST:PORT"]),
    ((2, 0, "node0", None, None), ["'node0' is malformed", "HOST:PORT"]),
    ((2, 0, "node0:http", None, None), ["'node0:http' is malformed"]),
    ((2, 0, "node0:80", None, None), ["port 80 is out of range", "1024..65534"]),
    ((2, 0, "h:29400", 0.0, None), ["--rdzv-timeout 0", "1..86400"]),
    ((2, 0, "h:29400", None, "--nnodes=3"), ["'--nnodes=3'", "sets itself"]),
    ((1, 1, None, None, None), ["--node-rank 1", "0..0"]),
    ((1, 0, "h:29400", None, None), ["multi-node", "--nnodes 2 or more"]),
])
def test_bad_node_flags_are_one_line_naming_the_value(flags, needles):
    with pytest.raises(UsageError) as refused:
        check(*flags)
    assert "\n" not in str(refused.value)
    for needle in needles:
        assert needle in str(refused.value)


def test_one_node_is_standalone_and_several_meet_at_port_plus_one():
    assert check(None, None, None, None, None) == Nodes()
    assert torchrun_flags(Nodes(), 2) == ["--standalone", "--nproc_per_node=2"]
    nodes = check(2, 1, "10.0.0.5:29400", 30, "--local-addr 10.0.0.6")
    flags = torchrun_flags(nodes, 4)
    assert "--node_rank=1" in flags and "--nnodes=2" in flags and "--rdzv_backend=static" in flags
    assert "--rdzv_endpoint=10.0.0.5:29401" in flags and "--rdzv_conf=timeout=30" in flags
    assert flags[-2:] == ["--local-addr", "10.0.0.6"]
    assert list(nodes.ranks(4, 1)) == [4, 5, 6, 7]


def test_an_ipv6_endpoint_keeps_its_brackets_for_torchrun():
    assert parse_endpoint("[fe80::1]:29400") == ("fe80::1", 29400)
    assert "--rdzv_endpoint=[fe80::1]:29401" in torchrun_flags(check(2, 0, "[fe80::1]:29400", None, None), 1)


def test_a_follower_whose_node_0_is_this_machine_knows_it():
    import socket

    from workbench.launch.nodes import Nodes, is_this_machine

    assert is_this_machine("127.0.0.1") and is_this_machine("localhost") and is_this_machine("::1")
    assert is_this_machine(socket.gethostname())
    assert not is_this_machine("192.0.2.7")           # TEST-NET-1: never this machine
    assert not is_this_machine("no-such-host.invalid")
    assert Nodes(2, 1, "127.0.0.1", 29400).leader_here and not Nodes(1, 0, "127.0.0.1", 29400).leader_here
