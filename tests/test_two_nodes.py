"""Two real nodes on one machine (tests/netns.py: two network namespaces joined by a veth pair, 10.231.0.1 and
10.231.0.2): the cluster recipes of docs/cluster.md, each rank or Ray node in its own namespace, every connection
between them a TCP connection over the veth link.

* One training job as 2 nodes x 1 rank, launched per node by the deepspeed launcher (``--hostfile --no_ssh
  --node_rank K --master_addr 10.231.0.1``) and by torchrun (``--nnodes 2 --node-rank K``): an env:// rendezvous
  at node 0's veth address, gloo on the veth (GLOO_SOCKET_IFNAME). World size 2, node 1's launcher ran rank 1,
  the ranks exchanged data over the link, and one step gives the prompts of one process on the same global batch.
* A Ray cluster of a head in node 0 and a worker in node 1 (one CPU each), and a sweep (``tune/ablation.py`` =
  ``scaleprompt tune``, ``--address``) whose trial is a 2-worker Ray Train + DeepSpeed run: one rank ran on each
  node (each rank's own log line, found in its node's Ray log folder), and the trial, run on node 1 away from the
  driver, left its run folder in the sweep folder.

Whatever listens inside a namespace is unreachable from the host's network; the host gains no listener on a
non-loopback address (checked while the jobs run). Skipped where namespaces cannot be made (not root, no ``ip``).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from engine_utils import ROOT, base_overrides, env, make_color_folder, results
from netns import NetnsNodes, Node, host_listeners, is_loopback, unavailable, wait_all
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
PORT = 29500  # (inside node 0's namespace: no other process on the machine can hold it)
RAY_PORT = 6379


@pytest.fixture
def nodes() -> Iterator[NetnsNodes]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    try:
        made = NetnsNodes.create()
    except RuntimeError as exc:
        pytest.skip(f"cannot make two network namespaces joined by a veth pair: {exc}")
    try:
        yield made
    finally:
        made.teardown()


class ListenerWatch:
    """Samples, while the nodes run, the listeners that the processes of this test (the test itself, the processes
    it started in the nodes or on the host, Ray's daemons) hold in the host's network namespace: one on an address
    other than loopback would be reachable from the host's network."""

    def __init__(self, nodes: NetnsNodes) -> None:
        self.nodes = nodes
        self.seen: set[tuple[str, int]] = set()

    def __call__(self) -> None:
        self.seen |= host_listeners({os.getpid(), *self.nodes.processes()})

    def leaked(self) -> list[tuple[str, int]]:
        self()
        return sorted((a, p) for a, p in self.seen if not is_loopback(a))


def tail(path: Path, chars: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.is_file() else "(no log)"
    return f"--- {path.name}:\n{text[-chars:]}"


def node_env(nodes: NetnsNodes, node: Node, tmp: Path) -> dict[str, str]:
    """The tests' launch environment (PYTHONPATH, CPU DeepSpeed, 1 thread), made a node's (veth, TCP rendezvous,
    Ray cluster mode)."""
    return nodes.env(node, base=env(tmp))


ONE_STEP = ["method.name=provp", "method.args.n_ctx=4", "optim.epochs=1", "optim.lr=0.5", "optim.momentum=0.0",
            "data.train_augment=false", "data.shuffle_buffer=0"]  # fmt: skip


def test_deepspeed_and_torchrun_jobs_on_two_nodes_equal_one_process(nodes, tmp_path):
    """One SGD step on the whole deterministic training set (global batch 16): 2 nodes x 1 rank (micro batch 8)
    under ZeRO-2 give the prompts of 1 process (as tests/test_launch.py's one-step test on one node), launched per
    node by the deepspeed launcher (no ssh) and, at the same time, by torchrun."""
    data = make_color_folder(tmp_path / "data", n_train=4, n_val=1, n_test=2)
    hostfile = tmp_path / "hostfile"  # (no ssh: the names only order the nodes)
    hostfile.write_text("".join(f"node{n.index} slots=1\n" for n in nodes))
    master = nodes[0].ip
    ports = {"deepspeed": PORT, "torchrun": PORT + 1}
    launchers = {
        "deepspeed": lambda node: [str(BIN / "deepspeed"), "--hostfile", str(hostfile), "--no_ssh", "--node_rank",
                                   str(node.index), "--master_addr", master, "--master_port", str(ports["deepspeed"])],
        "torchrun": lambda node: [str(BIN / "torchrun"), "--nnodes", "2", "--nproc-per-node", "1", "--node-rank",
                                  str(node.index), "--master-addr", master, "--master-port", str(ports["torchrun"])],
    }  # fmt: skip
    ref_out, ref_log = tmp_path / "one-process", tmp_path / "one-process.log"
    with open(ref_log, "w") as fh:  # the reference, on the host, meanwhile
        reference = subprocess.Popen(
            [sys.executable, "scaleprompt/train.py", *base_overrides(data, tmp_path / "cache-ref", ref_out), *ONE_STEP],
            cwd=ROOT, env=nodes.marked(env(tmp_path / "ref")), stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    logs = {(job, n.index): tmp_path / f"{job}-node{n.index}.log" for job in launchers for n in nodes}
    try:
        traffic = [nodes.link_bytes(n) for n in nodes]
        watch = ListenerWatch(nodes)
        procs = [
            nodes.popen(node, [*launch(node), "scaleprompt/train.py", "--ds", "ds_configs/zero2.json",
                               *base_overrides(data, tmp_path / f"cache-{job}", tmp_path / job), *ONE_STEP],
                        node_env(nodes, node, tmp_path / f"env-{job}{node.index}"), logs[job, node.index], cwd=ROOT)
            for job, launch in launchers.items() for node in nodes
        ]  # fmt: skip
        codes = wait_all([*procs, reference], timeout=300, tick=watch)
    finally:
        if reference.poll() is None:
            reference.kill()
        reference.wait()
        for port in ports.values():  # (DeepSpeed's CPU all-reduce buffers, if it made any)
            for buffer in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{master}_{port}_*"):
                buffer.unlink(missing_ok=True)
    report = "\n".join(tail(p) for p in [*logs.values(), ref_log])
    assert codes == [0] * 5, f"exit codes (deepspeed x 2 nodes, torchrun x 2, one process): {codes}\n{report}"
    # each node's deepspeed launcher ran its own rank: node 1 ran global rank 1 of 2
    mapping = "global_rank_mapping=defaultdict(<class 'list'>, {'node0': [0], 'node1': [1]})"
    for node in nodes:
        text = logs["deepspeed", node.index].read_text()
        assert f"nnodes=2, num_local_procs=1, node_rank={node.index}" in text and mapping in text, report
        assert "exits successfully" in text, report
    # the ranks talked over the veth link (node 1 sees nothing else of node 0): the rendezvous, the broadcasts of
    # the run's set-up, the all-reduce of the prompts' gradients, in both directions
    for node, (rx0, tx0) in zip(nodes, traffic, strict=True):
        rx, tx = nodes.link_bytes(node)
        assert rx - rx0 > 20_000 and tx - tx0 > 20_000, (
            f"node {node.index}: {rx - rx0} B in, {tx - tx0} B out"
        )
    assert not watch.leaked(), f"listeners on the host's non-loopback addresses: {watch.leaked()}"
    assert results(ref_out)["world_size"] == 1
    expected = load_file(ref_out / "prompts.safetensors")["prompts"]
    for job in launchers:
        assert results(tmp_path / job)["world_size"] == 2, job
        assert "micro batch 8 x accumulation 1 x world 2 = 16" in logs[job, 0].read_text(), report
        prompts = load_file(tmp_path / job / "prompts.safetensors")["prompts"]
        torch.testing.assert_close(prompts, expected, rtol=0, atol=1e-6, msg=lambda m, job=job: f"{job}: {m}")


SPACE = """
metric: val_top1
mode: max
params:
  method.args.n_ctx: {type: categorical, values: [2, 4]}
"""


def test_ray_sweep_trial_spans_both_nodes(nodes, tmp_path):
    """A Ray head in node 0 and a worker in node 1, one CPU each: a trial of 2 workers x 1 CPU must use both
    nodes. The driver runs on node 0; the trial's own process (0 CPUs, 256 MB of Ray memory: the sweep driver's
    reservation) cannot fit on the head, which offers 200 MB (``ray start --memory``, a hidden flag), so it runs on
    node 1, away from the driver, as most trials of a real cluster do: its run folder must still be in the sweep's
    folder. Each node's Ray temp folder is
    its own (the namespaces share one file system)."""
    head, worker = nodes
    # short paths: Ray's unix sockets live under the temp folder (at most 107 characters)
    temps = [Path(tempfile.mkdtemp(prefix=f"sp-ray{n.index}-", dir="/tmp")) for n in nodes]
    try:
        data = make_color_folder(tmp_path / "data", n_train=8, n_val=2, n_test=4)
        space = tmp_path / "space.yaml"
        space.write_text(SPACE)
        envs = [node_env(nodes, n, tmp_path / f"env{n.index}") for n in nodes]
        ray = str(BIN / "ray")
        common = ["--num-cpus", "1", "--disable-usage-stats", "--object-store-memory", str(100 * 2**20)]
        watch = ListenerWatch(nodes)
        traffic = [nodes.link_bytes(n) for n in nodes]
        starts = [
            [ray, "start", "--head", "--node-ip-address", head.ip, "--port", str(RAY_PORT), "--include-dashboard",
             "false", "--memory", str(200 * 2**20), "--temp-dir", str(temps[0]), *common],
            [ray, "start", "--address", f"{head.ip}:{RAY_PORT}", "--node-ip-address", worker.ip, "--temp-dir",
             str(temps[1]), *common],
        ]  # fmt: skip
        for node, start in zip(nodes, starts, strict=True):
            log = tmp_path / f"ray-start-{node.index}.log"
            assert nodes.run(node, start, envs[node.index], log, cwd=ROOT) == 0, tail(log)
        storage = tmp_path / "search"
        sweep = [sys.executable, "tune/ablation.py", "--space", str(space), "--num-samples", "1",
                 "--max-concurrent", "1", "--storage", str(storage), "--name", "sweep",
                 "--address", f"{head.ip}:{RAY_PORT}", "--workers-per-trial", "2", "--cpus-per-trial", "2",
                 "--ds", "ds_configs/zero2.json", *base_overrides(data, tmp_path / "cache", tmp_path / "unused"),
                 "method.name=provp", "optim.epochs=1", "data.num_workers=0"]  # fmt: skip
        log = tmp_path / "driver.log"
        (code,) = wait_all([nodes.popen(head, sweep, envs[0], log, cwd=ROOT)], timeout=300, tick=watch)
        ray_logs = {n.index: sorted(temps[n.index].glob("session_2*/logs/worker-*.err")) for n in nodes}
        report = tail(log) + "".join(f"\n{tail(p, 1500)}" for paths in ray_logs.values() for p in paths)
        assert code == 0, report
        with open(storage / "sweep" / "trials.csv") as fh:
            trials = list(csv.DictReader(fh))
        assert len(trials) == 1 and trials[0]["status"] == "finished", trials
        trial = Path(trials[0]["trial_dir"])
        assert json.loads((trial / "result.json").read_text().splitlines()[-1])["node_ip"] == worker.ip
        run = trial / "run"  # (written from node 1, where the trial ran, and by rank 0 wherever it ran)
        assert json.loads((run / "results.json").read_text())["world_size"] == 2, sorted(trial.rglob("*"))
        assert (run / "prompts.safetensors").is_file() and (run / "checkpoints" / "latest.json").is_file()
        shards = {p.name for p in trial.glob("train/checkpoint_*/*optim_states.pt")}
        assert any("rank_0" in n for n in shards) and any("rank_1" in n for n in shards), shards
        # which rank ran where: each Ray Train worker logs "rank R of 2 on node <ip>" into the Ray log folder of
        # the node it runs on (scaleprompt/search/trial.py); Ray Train may number the nodes' workers either way
        found = {
            index: [m.groups() for p in paths for m in re.finditer(r"rank (\d) of 2 on node ([\d.]+)", p.read_text())]
            for index, paths in ray_logs.items()
        }  # fmt: skip
        assert all(len(found[n.index]) == 1 and found[n.index][0][1] == n.ip for n in nodes), (
            f"{found}\n{report}"
        )
        assert sorted(found[n.index][0][0] for n in nodes) == ["0", "1"], found
        for node, (rx0, tx0) in zip(nodes, traffic, strict=True):
            rx, tx = nodes.link_bytes(node)
            assert rx - rx0 > 20_000 and tx - tx0 > 20_000, (
                f"node {node.index}: {rx - rx0} B in, {tx - tx0} B out"
            )
        assert not watch.leaked(), f"listeners on the host's non-loopback addresses: {watch.leaked()}"
    finally:
        nodes.teardown()  # (the Ray daemons hold files in the temp folders; teardown is idempotent)
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)
