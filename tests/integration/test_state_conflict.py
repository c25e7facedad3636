"""A node whose data directory holds another cluster's state exits 2, a configuration error, so a
supervisor that restarts failures (systemd's Restart=on-failure with RestartPreventExitStatus=2)
stops instead of restarting it for ever, and the message says what to do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dynactl.local import node_toml

BIN = Path(sys.executable).parent


def test_a_node_on_another_clusters_data_exits_2_with_the_way_out(make_cluster):
    cluster = make_cluster(nodes=1, partitions=16, n=1, r=1, w=1)
    node = cluster.cluster.node("n1")
    cluster.stop("n1")
    config = Path(node.config)
    config.write_text(node_toml(node, [node], {**cluster.cluster.settings, "partitions": 64}))
    finished = subprocess.run([str(BIN / "dynamod"), "--config", str(config)], capture_output=True, text=True,
                              timeout=60, cwd=config.parent, check=False)
    assert finished.returncode == 2, finished.stderr
    assert "does not hold a cluster state of 64 partitions" in finished.stderr
    assert f"empty {node.data_dir}" in finished.stderr and "Traceback" not in finished.stderr
