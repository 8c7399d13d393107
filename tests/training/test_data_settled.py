"""data=auto settled without downloading, as several nodes compare it before they measure."""
from __future__ import annotations

from workbench import cli
from workbench.config import RunConfig
from workbench.launch.nodes import Nodes
from workbench.training.data import CIFAR_FOLDER, settled_without_download


def test_auto_is_cifar10_where_the_folder_holds_it_and_synthetic_elsewhere(tmp_path):
    assert settled_without_download("auto", str(tmp_path)) == "synthetic"
    (tmp_path / CIFAR_FOLDER).mkdir()
    assert settled_without_download("auto", str(tmp_path)) == "cifar10"
    assert settled_without_download("synthetic", str(tmp_path)) == "synthetic"   # only auto is settled


def test_only_a_run_of_several_nodes_settles_it(tmp_path):
    cfg = RunConfig(data="auto", data_dir=str(tmp_path))
    assert cli._settled_across_nodes(cfg, Nodes()).data == "auto"
    assert cli._settled_across_nodes(cfg, Nodes(2, 1, "127.0.0.1", 29400)).data == "synthetic"
