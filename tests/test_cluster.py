"""The cluster: `ray_cluster.yaml` passes Ray's own validation, and an autoscaling
cluster on this one machine (Ray's fake multi-node provider) scales workers up for a
job that needs more than the head has, and back down when they idle."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.ports import free_ports
from tests.raycluster import LocalCluster

ROOT = Path(__file__).resolve().parents[1]


def test_ray_cluster_yaml_is_valid_for_ray():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    validate_config(prepare_config(config))  # raises on any schema error
    types = config["available_node_types"]
    assert config["provider"]["type"] == "aws"
    assert types[config["head_node_type"]]["resources"].get("CPU") == 0
    gpu_types = [t for t in types if t != config["head_node_type"]]
    assert len(gpu_types) >= 2 and all(types[t]["min_workers"] == 0 for t in gpu_types)
    assert any("tools/setup_env.sh" in c for c in config["setup_commands"])

    broken = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    del broken["available_node_types"]["gpu_1x"]["node_config"]
    with pytest.raises(Exception):
        validate_config(prepare_config(broken))


def test_dashboard_listens_on_loopback_only():
    """Anyone who reaches the dashboard / job server can run jobs: the head binds it to
    127.0.0.1 and the README's `ray dashboard` port-forward reaches it over SSH."""
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    head = [c for c in config["head_start_ray_commands"] if "ray start" in c and "--head" in c]
    assert head and all("--dashboard-host=127.0.0.1" in c and "0.0.0.0" not in c for c in head)
    assert "ray dashboard ray_cluster.yaml" in (ROOT / "README.md").read_text()


def test_cluster_ports_are_distinct():
    # Chosen one socket at a time, two of a cluster's ports once came back equal and
    # `ray start` refused (CI, stop 12). That happened in ~1 of 700 sets of six here, so
    # 5000 sets (0.5 s) catch it nearly always; sockets held together cannot repeat.
    for _ in range(5000):
        ports = free_ports(6)
        assert len(set(ports)) == 6 and all(p > 0 for p in ports)


FAKE_CLUSTER = {
    "cluster_name": "d2vr-fake",
    "max_workers": 2,
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 0.25,  # 15 s, so the test sees the scale-down
    # As in Ray's own fake_multi_node/example.yaml: the fake provider starts each node's
    # raylet itself, so the autoscaler must not also run SSH "updaters" on it (they fail,
    # and a failed update terminates the node as "launch failed").
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                 "disable_node_updaters": True, "disable_launch_config_check": True},
    "auth": {"ssh_user": "ubuntu"},
    "docker": {},
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
        "cpu_worker": {"resources": {"CPU": 2, "worker_slot": 1}, "node_config": {},
                       "min_workers": 0, "max_workers": 2},
    },
    "head_node_type": "ray.head.default",
    "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
    "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
    "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
    "head_start_ray_commands": [], "worker_start_ray_commands": [],
}

DRIVER = textwrap.dedent("""
    import json, time, ray
    ray.init(address="auto")
    alive = lambda: sum(1 for n in ray.nodes() if n["Alive"])
    before = alive()

    @ray.remote(num_cpus=2, resources={"worker_slot": 1})
    def work(i):
        time.sleep(1)
        return ray.get_runtime_context().get_node_id()

    t0 = time.time()
    nodes = set(ray.get([work.remote(i) for i in range(2)], timeout=240))
    scaled_up = alive()
    up_s = time.time() - t0
    deadline = time.time() + 120
    while alive() > before and time.time() < deadline:
        time.sleep(1)
    print("FIGURES " + json.dumps({"before": before, "scaled_up": scaled_up, "worker_nodes_used": len(nodes),
                      "after_idle": alive(), "up_s": up_s, "down_s": time.time() - t0 - up_s}))
""")


def _autoscale_once(tmp_path) -> subprocess.CompletedProcess:
    config = tmp_path / "fake_cluster.yaml"
    cluster = LocalCluster(num_cpus=1, autoscaling_config=str(config),
                           env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    # Fake worker nodes join the head's GCS at this address (the provider's default is :6379).
    fake = {**FAKE_CLUSTER, "provider": {**FAKE_CLUSTER["provider"], "gcs_address": cluster.address}}
    config.write_text(json.dumps(fake))
    cluster.start()
    try:
        return cluster.run([sys.executable, "-c", DRIVER], timeout=400)
    finally:
        cluster.stop()


@pytest.mark.slow
def test_autoscaling_up_and_down_on_one_machine(tmp_path):
    out = _autoscale_once(tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    # The driver's stdout also carries Ray's autoscaler events (e.g. "(autoscaler +25s)
    # Removing 1 nodes ...") in any order around our line: pick it by its prefix.
    lines = [line for line in out.stdout.splitlines() if line.startswith("FIGURES ")]
    assert len(lines) == 1, out.stdout[-3000:]
    figures = json.loads(lines[0].removeprefix("FIGURES "))
    print("autoscaling:", figures)
    assert figures["before"] == 1, figures                 # the head alone
    assert figures["scaled_up"] >= 2, figures              # worker nodes were launched
    assert figures["after_idle"] == 1, figures             # and removed when idle
