"""Two "nodes" on one machine: two Linux network namespaces joined by a veth pair (root only).

Node ``i`` (0 or 1) is the namespace ``spnet-<pid>-<i>`` with ``lo`` up and its end of the veth pair, ``veth0``, at
``10.231.0.<i+1>/24``. A process started in a node sees only that node's interfaces, so a rank in node 1 reaches
node 0 over the veth link and nothing else, as over a real network, and whatever listens inside a node (a
rendezvous store, Ray's services) is unreachable from the host's own interfaces. The nodes share the machine's file
system, PID space and hostname.

    nodes = NetnsNodes.create()
    try:
        proc = nodes.popen(nodes[1], ["python", "-c", "..."], env=nodes.env(nodes[1]), log=path)
        ...
    finally:
        nodes.teardown()  # every process started in a node killed, the namespaces (and their links) deleted

:func:`unavailable` says why namespaces cannot be made here (not root, no ``ip``, ``ip netns add`` refused).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

SUBNET = "10.231.0"  # (private, inside the namespaces only: the host's routes never see it)
PREFIX = "spnet"
IFNAME = "veth0"
MARKER = "SPNET_OWNER"  # in the environment of every process started through the harness


@dataclass(frozen=True)
class Node:
    """One namespace: its name, its veth interface and that interface's address."""

    index: int
    netns: str
    ifname: str
    ip: str

    def wrap(self, args: Sequence[str]) -> list[str]:
        """``args`` run inside this node."""
        return ["ip", "netns", "exec", self.netns, *args]


def _ip(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout, check=False)


def _must(*args: str) -> None:
    done = _ip(*args)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {(done.stderr or done.stdout).strip()}")


def unavailable() -> str | None:
    """Why network namespaces cannot be made on this machine, or None (probed: a namespace is created, entered and
    deleted)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"{PREFIX}-probe-{uuid.uuid4().hex[:8]}"
    try:
        added = _ip("netns", "add", probe)
        if added.returncode != 0:
            return f"`ip netns add` failed: {added.stderr.strip()}"
        entered = subprocess.run(
            ["ip", "netns", "exec", probe, "ip", "link", "set", "lo", "up"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if entered.returncode != 0:
            return f"`ip netns exec` failed: {entered.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"network namespaces unavailable: {exc}"
    finally:
        _ip("netns", "delete", probe)
    return None


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _netns_names() -> list[str]:
    listed = _ip("netns", "list").stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def _kill_netns_processes(names: Sequence[str], grace: float) -> None:
    """Every process inside the namespaces ``names`` (only processes this harness started live there): SIGTERM,
    then SIGKILL after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        pids = [int(p) for name in names for p in _ip("netns", "pids", name).stdout.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + wait
        while pids and time.time() < deadline:
            time.sleep(0.1)
            pids = [p for p in pids if _pid_alive(p)]
        if not pids:
            return


def remove_stale() -> list[str]:
    """Delete the namespaces a killed test session of this harness left behind (their creator's pid is gone),
    with the processes still running in them."""
    removed = []
    for name in _netns_names():
        found = re.fullmatch(rf"{PREFIX}-(\d+)-\d+", name)
        if found and not _pid_alive(int(found.group(1))):
            _kill_netns_processes([name], grace=1)
            _ip("netns", "delete", name)
            removed.append(name)
    return removed


@dataclass
class NetnsNodes:
    """The nodes of one test, the processes started in them, and their teardown."""

    nodes: list[Node]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def __getitem__(self, index: int) -> Node:
        return self.nodes[index]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    @classmethod
    def create(cls) -> NetnsNodes:
        """Two namespaces joined by a veth pair. On failure whatever was made is deleted and the error raised
        (``RuntimeError`` naming the ``ip`` command)."""
        remove_stale()
        nodes = [Node(i, f"{PREFIX}-{os.getpid()}-{i}", IFNAME, f"{SUBNET}.{i + 1}") for i in range(2)]
        made = cls(nodes)
        try:
            for node in nodes:
                _must("netns", "add", node.netns)
            # both ends are named veth0, each in its own namespace (as every node of a cluster has its eth0)
            _must(
                "-n",
                nodes[0].netns,
                "link",
                "add",
                IFNAME,
                "type",
                "veth",
                "peer",
                "name",
                IFNAME,
                "netns",
                nodes[1].netns,
            )
            for node in nodes:
                _must("-n", node.netns, "addr", "add", f"{node.ip}/24", "dev", node.ifname)
                _must("-n", node.netns, "link", "set", node.ifname, "up")
                _must("-n", node.netns, "link", "set", "lo", "up")
        except BaseException:
            made.teardown()
            raise
        return made

    def env(self, node: Node, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a process on ``node``: gloo on the node's veth interface (GLOO_SOCKET_IFNAME: the
        rendezvous address is not loopback, so the engine does not pin gloo to ``lo``), no file rendezvous (the
        ranks meet over TCP at MASTER_ADDR), and Ray's default cluster mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
        unset): the test session sets it to 0, which keeps every Ray service on 127.0.0.1, but a Ray node in a
        namespace must listen on its veth address for the other node to reach it. That is safe: a listener inside
        a private namespace is unreachable from the host's network."""
        e = dict(os.environ if base is None else base)
        for name in ("SCALEPROMPT_INIT_METHOD", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
            e.pop(name, None)
        e.update({MARKER: self.owner, "GLOO_SOCKET_IFNAME": node.ifname})
        return e

    @property
    def owner(self) -> str:
        """This harness's mark (the value of SPNET_OWNER in its processes' environment)."""
        return f"{PREFIX}-{os.getpid()}"

    def marked(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this environment) with this harness's mark, for a process started outside the nodes
        that :meth:`processes` should count."""
        return {**(os.environ if base is None else base), MARKER: self.owner}

    def processes(self) -> set[int]:
        """Every running process whose environment carries this harness's mark: what it started, wherever it is now
        (Ray's daemons leave their ``ray start``)."""
        mark = f"{MARKER}={self.owner}".encode()
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if mark in (entry / "environ").read_bytes().split(b"\0"):
                        found.add(int(entry.name))
        return found

    def popen(
        self, node: Node, args: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path | None = None
    ) -> subprocess.Popen:
        """Start ``args`` on ``node`` in a new session (process group), stdout and stderr into ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                node.wrap(args),
                cwd=cwd,
                env=dict(env),
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def run(
        self,
        node: Node,
        args: Sequence[str],
        env: Mapping[str, str],
        log: Path,
        cwd: Path | None = None,
        timeout: float = 120,
    ) -> int:
        """``args`` on ``node`` to completion (its process group killed after ``timeout`` seconds); the exit code."""
        proc = self.popen(node, args, env, log, cwd)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            raise

    def link_bytes(self, node: Node) -> tuple[int, int]:
        """(received, sent) bytes of ``node``'s veth interface so far: what crossed the link, counted by the
        kernel."""
        shown = _ip("-n", node.netns, "-j", "-s", "link", "show", node.ifname)
        if shown.returncode != 0:
            raise RuntimeError(f"ip link show in {node.netns}: {shown.stderr.strip()}")
        stats = json.loads(shown.stdout)[0]["stats64"]
        return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])

    def teardown(self) -> None:
        """Stop every process started here (its process group), then any process still inside a node (Ray's
        daemons detach into sessions of their own): SIGTERM, SIGKILL 3 s later; then delete the namespaces and
        with them the veth pair. Safe to call twice."""
        for proc in self.procs:
            if proc.poll() is None:
                _kill_group(proc, signal.SIGTERM)
        existing = set(_netns_names())
        names = [node.netns for node in self.nodes if node.netns in existing]
        _kill_netns_processes(names, grace=3)
        for proc in self.procs:
            if proc.poll() is None:
                _kill_group(proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for name in names:
            deleted = _ip("netns", "delete", name)
            if deleted.returncode != 0:
                logger.warning("ip netns delete %s: %s", name, deleted.stderr.strip())


def _kill_group(proc: subprocess.Popen, sig: signal.Signals = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _address(hex_address: str) -> str:
    """An address of /proc/net/tcp{,6} (each 32-bit word in host order, little-endian here) as text."""
    raw = bytes.fromhex(hex_address)
    return str(ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))))


def host_listeners(pids: Iterable[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket listening in this process's network namespace (the host's, for the test
    process) that one of ``pids`` holds. A process inside a node holds none: its sockets are the node's."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # (LISTEN)
                address, port = fields[1].split(":")
                found.add((_address(address), int(port, 16)))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def wait_all(
    procs: Sequence[subprocess.Popen],
    timeout: float,
    tick: Callable[[], None] | None = None,
    every: float = 0.3,
) -> list[int | None]:
    """Wait for every process, calling ``tick()`` meanwhile (e.g. to sample something while they run); the exit
    codes, None for a process still running at ``timeout`` (left to the teardown)."""
    deadline = time.time() + timeout
    while time.time() < deadline and any(p.poll() is None for p in procs):
        if tick is not None:
            tick()
        time.sleep(every)
    return [p.poll() for p in procs]
