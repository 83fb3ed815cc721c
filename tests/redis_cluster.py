"""A real Redis Cluster for tests and benchmarks: ``redis-server`` child processes on free
127.0.0.1 ports, joined by ``redis-cli --cluster create``, that a test can restart or fail over.

    with LocalCluster() as cluster:
        cluster.start(masters=3, replicas=1)
        client = redis.cluster.RedisCluster.from_url(cluster.url)

Tests get one through the ``redis_cluster`` fixture (one cluster for the session: call
``flush(cluster)`` before using it) or ``redis_cluster_factory`` (clusters of the test's own,
for restarts and failovers). Both skip when ``redis-server`` or ``redis-cli`` is missing,
unless REQUIRE_CLUSTER is set (.ci/run sets REQUIRE_CLUSTER=1), which makes that a failure.

tests/conftest.py registers this module's fixtures (``pytest_plugins``); a test module imports
``LocalCluster`` or ``flush`` from here as it needs. PYTEST_DONT_REWRITE: no test asserts live
here, so pytest need not rewrite it (it would warn, and warnings are errors here)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest
import redis

HOST = "127.0.0.1"
SLOTS = 16384
BUS_PORT_OFFSET = 10000  # a node's cluster bus listens on its port + 10000
NODE_TIMEOUT_MS = 1000  # how soon a silent node is suspected, so failovers take seconds
ANSWER_TIMEOUT = 10.0  # seconds for a started redis-server to answer PING
READY_TIMEOUT = 20.0  # seconds for the cluster to agree it is whole again
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
LOG_TAIL_LINES = 12


def missing_binaries() -> list[str]:
    """The programs a cluster needs that are not on PATH."""
    return [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports P on 127.0.0.1 with P and its cluster bus port P + 10000 both
    free right now (held open together while choosing, so no two are the same)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(count * 50):
            if len(ports) == count:
                break
            first = socket.socket()
            held.append(first)
            first.bind((HOST, 0))
            port = int(first.getsockname()[1])
            if port + BUS_PORT_OFFSET > 65535:
                continue
            bus = socket.socket()
            held.append(bus)
            try:
                bus.bind((HOST, port + BUS_PORT_OFFSET))
            except OSError:
                continue
            ports.append(port)
    finally:
        for s in held:
            s.close()
    if len(ports) < count:
        raise RuntimeError(f"found only {len(ports)} of {count} free port pairs (P, P + 10000)")
    return ports


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, even by SIGKILL (Linux), so no Redis
    outlives a killed test run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class _Node:
    """One ``redis-server`` of the cluster: its port and directory outlive its process."""

    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, decode_responses=True,
                           socket_timeout=1, socket_connect_timeout=1)

    def log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            lines = ["(no log)"]
        return "\n".join([f"--- {self.address} (redis.log, last lines)", *lines])


class LocalCluster:
    """A Redis Cluster of ``redis-server`` processes this object started and alone stops.

    ``nodes`` lists the masters first, in creation order, then the replicas, grouped by the
    master they were created for: with ``replicas=1``, node ``masters + k`` replicates node
    ``k``. Node indices stay the same after a failover, though roles change."""

    def __init__(self) -> None:
        self._nodes: list[_Node] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._appendonly = True
        self._master_ports: set[int] = set()  # as last seen: url points at a live master

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def nodes(self) -> list[tuple[str, int]]:
        return [(HOST, node.port) for node in self._nodes]

    @property
    def url(self) -> str:
        """The first running master's URL: enough for a cluster client to find all the rest."""
        for node in self._nodes:
            if node.port in self._master_ports and node.running:
                return f"redis://{node.address}/0"
        raise RuntimeError("no running master: start() the cluster first")

    def start(self, masters: int = 3, replicas: int = 0, appendonly: bool = True) -> Self:
        """Start ``masters * (1 + replicas)`` servers, create the cluster and wait until every
        node reports ``cluster_state:ok`` with all slots served and every replica in sync."""
        if self._nodes:
            raise RuntimeError("this cluster is already started")
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        if missing := missing_binaries():
            raise RuntimeError(f"not on PATH: {', '.join(missing)}")
        self._appendonly = appendonly
        self._tmp = tempfile.TemporaryDirectory(prefix="monitor-test-cluster-")
        for port in free_ports(masters * (1 + replicas)):
            directory = Path(self._tmp.name) / str(port)
            directory.mkdir()
            self._nodes.append(_Node(port, directory))
        try:
            for node in self._nodes:
                self._spawn(node)
            for node in self._nodes:
                self._wait_answers(node)
            self._create(replicas)
            self._order_by_role(masters)
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def restart_node(self, i: int) -> None:
        """Stop node ``i`` (SIGTERM: it writes out its append-only file), if it runs, and start
        it again with the same port, directory and config; wait until the cluster is ok. With
        appendonly its keys survive. Restarting a master that has replicas can outlast the
        node timeout, so a replica may be promoted meanwhile; the cluster is ok either way."""
        node = self._nodes[i]
        self._stop_process(node, signal.SIGTERM)
        self._spawn(node)
        self._wait_answers(node)
        self.wait_ok()

    def failover(self, i: int) -> int:
        """Crash master ``i`` (SIGKILL), wait until one of its replicas is promoted and the
        cluster is ok again, and return the promoted node's index. Node ``i`` stays down;
        ``restart_node(i)`` brings it back as a replica."""
        node = self._nodes[i]
        masters = self._masters_of()
        if masters.get(node.port) is not None or not node.running:
            raise ValueError(f"node {i} ({node.address}) is not a running master")
        candidates = [n for n in self._nodes if masters.get(n.port) == node.port and n.running]
        if not candidates:
            raise ValueError(f"master {i} ({node.address}) has no running replica to promote")
        self._stop_process(node, signal.SIGKILL)
        promoted: list[_Node] = []

        def one_promoted() -> str | None:
            for candidate in candidates:
                with contextlib.closing(candidate.client()) as client:
                    if client.info("replication")["role"] == "master":
                        promoted.append(candidate)
                        return None
            return f"no replica of {node.address} has been promoted yet"

        self._wait_until(one_promoted, f"a replica of {node.address} to take over")
        self.wait_ok()
        return self._nodes.index(promoted[0])

    def wait_ok(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until every running node reports ``cluster_state:ok`` with all 16384 slots
        served by running nodes, sees no running node as failing, and every replica is in
        sync; a RuntimeError with the logs' tail if that takes longer than ``timeout``."""
        self._wait_until(self._problem, "cluster_state:ok on every node", timeout)
        self._master_ports = {port for port, master in self._masters_of().items()
                              if master is None}

    def masters(self) -> list[tuple[str, int]]:
        """The running masters as the cluster sees them now, in ``nodes`` order."""
        roles = self._masters_of()
        return [(HOST, n.port) for n in self._nodes if n.running and roles.get(n.port) is None]

    def stop(self) -> None:
        """End every process this cluster started (SIGTERM, then SIGKILL after a grace) and
        delete its directories. Safe to call twice."""
        running = [node for node in self._nodes if node.running]
        for node in running:
            assert node.proc is not None
            node.proc.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for node in running:
            assert node.proc is not None
            try:
                node.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
            node.proc = None
        self._nodes = []
        self._master_ports = set()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _spawn(self, node: _Node) -> None:
        server = shutil.which("redis-server")
        assert server is not None  # start() checked
        args = [server, "--port", str(node.port), "--bind", HOST,
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--save", "", "--appendonly", "yes" if self._appendonly else "no",
                "--repl-diskless-sync-delay", "0",  # a replica syncs at once, not after 5 s
                "--dir", str(node.directory)]
        with node.log.open("ab") as log:  # the child keeps its own copy of the descriptor
            node.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no thread of ours forks
                start_new_session=True,  # a Ctrl-C is the test run's to handle: it stops us
            )

    def _wait_answers(self, node: _Node) -> None:
        deadline = time.monotonic() + ANSWER_TIMEOUT
        client = node.client()
        try:
            while time.monotonic() < deadline:
                if not node.running:
                    raise RuntimeError(f"redis-server on {node.address} exited\n"
                                       f"{node.log_tail()}")
                with contextlib.suppress(redis.ConnectionError):  # or still loading its AOF
                    client.ping()
                    return
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"redis-server on {node.address} did not answer within "
                           f"{ANSWER_TIMEOUT:.0f}s\n{node.log_tail()}")

    def _create(self, replicas: int) -> None:
        cli = shutil.which("redis-cli")
        assert cli is not None  # start() checked
        command = [cli, "--cluster", "create", *(n.address for n in self._nodes),
                   "--cluster-replicas", str(replicas), "--cluster-yes"]
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=READY_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"redis-cli --cluster create took over {READY_TIMEOUT:.0f}s\n"
                               f"{self._logs_tail()}") from e
        if done.returncode != 0:
            output = "\n".join((done.stdout + done.stderr).splitlines()[-LOG_TAIL_LINES:])
            raise RuntimeError(f"redis-cli --cluster create failed (exit {done.returncode}):\n"
                               f"{output}\n{self._logs_tail()}")

    def _order_by_role(self, masters: int) -> None:
        """Masters first, in the order given; then each master's replicas, in that order."""
        roles = self._masters_of()
        order = [n for n in self._nodes if roles.get(n.port) is None]
        if len(order) != masters:
            raise RuntimeError(f"redis-cli made {len(order)} masters, not {masters}\n"
                               f"{self._logs_tail()}")
        for master in list(order):
            order += [n for n in self._nodes if roles.get(n.port) == master.port]
        self._nodes = order

    def _masters_of(self) -> dict[int, int | None]:
        """Each running node's port -> its master's port (None for a master), as each node
        says of itself."""
        roles: dict[int, int | None] = {}
        for node in self._nodes:
            if node.running:
                with contextlib.closing(node.client()) as client:
                    replication = client.info("replication")
                replica = replication["role"] == "slave"
                roles[node.port] = int(replication["master_port"]) if replica else None
        return roles

    def _problem(self) -> str | None:
        """Why the cluster is not whole yet, as the first running node that disagrees says;
        None when every running node is content."""
        try:
            roles = self._masters_of()
        except redis.RedisError as e:
            return f"a node does not answer ({e})"
        for node in self._nodes:
            if not node.running:
                continue
            with contextlib.closing(node.client()) as client:
                try:
                    problem = _node_problem(client, roles)
                except redis.RedisError as e:
                    problem = f"does not answer ({e})"
            if problem is not None:
                return f"{node.address} {problem}"
        return None

    def _wait_until(self, problem: Callable[[], str | None], what: str,
                    timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = problem()
        while last is not None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis Cluster: no {what} after {timeout:.0f}s; last: "
                                   f"{last}\n{self._logs_tail()}")
            time.sleep(0.1)
            last = problem()

    def _stop_process(self, node: _Node, how: signal.Signals) -> None:
        if node.proc is None:
            return
        if node.proc.poll() is None:
            node.proc.send_signal(how)
            try:
                node.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        node.proc = None

    def _logs_tail(self) -> str:
        return "\n".join(node.log_tail() for node in self._nodes)


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _node_problem(client: redis.Redis, roles: dict[int, int | None]) -> str | None:
    """What one node says is wrong with the cluster, or None. ``roles`` are the running
    nodes' own words on whom they replicate; this node's view must agree with them."""
    info = client.cluster("INFO")
    if info["cluster_state"] != "ok":
        return f"reports cluster_state:{info['cluster_state']}"
    for field in ("cluster_slots_assigned", "cluster_slots_ok"):
        if int(info[field]) != SLOTS:
            return f"reports {field}:{info[field]}"
    view = client.cluster("NODES")
    if unknown := set(roles) - {_port(address) for address in view}:
        return f"does not know {sorted(unknown)} yet"
    port_of = {entry["node_id"]: _port(address) for address, entry in view.items()}
    for address, entry in view.items():
        port = _port(address)
        flags = set(entry["flags"].split(","))
        if port not in roles:
            if entry["slots"]:
                return f"still has slots served by the stopped {address}"
            continue
        if {"fail", "fail?"} & flags or not entry["connected"]:
            state = "connected" if entry["connected"] else "disconnected"
            return f"sees {address} as {entry['flags']} ({state})"
        master = None if "master" in flags else port_of.get(entry["master_id"])
        if master != roles[port]:
            return f"does not know yet that {address} replicates {roles[port] or 'nobody'}"
        if "myself" in flags and master is not None:
            link = client.info("replication").get("master_link_status")
            if link != "up":
                return f"is a replica whose link to its master is {link}"
    return None


def flush(cluster: LocalCluster) -> None:
    """FLUSHALL on every master: a clean cluster for the next test (replicas follow)."""
    for host, port in cluster.masters():
        with contextlib.closing(redis.Redis(host=host, port=port)) as client:
            client.flushall()


def require_binaries() -> None:
    """Skip the test when redis-server or redis-cli is missing; fail instead when
    REQUIRE_CLUSTER is set, so CI cannot pass without running the cluster tests."""
    if not (missing := missing_binaries()):
        return
    message = (f"Redis Cluster tests need {' and '.join(missing)} on PATH "
               "(apt install redis-server redis-tools)")
    if os.environ.get("REQUIRE_CLUSTER"):  # .ci/run: these must run, not skip
        pytest.fail(f"{message}; REQUIRE_CLUSTER is set, so that is a failure")
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """One Redis Cluster (3 masters, appendonly) for the whole session. Tests share it: call
    ``flush(cluster)`` first, and leave its nodes as you found them."""
    require_binaries()
    with LocalCluster() as cluster:
        cluster.start()
        yield cluster


@pytest.fixture
def redis_cluster_factory() -> Iterator[Callable[..., LocalCluster]]:
    """Start Redis Clusters of this test's own (``make(masters=3, replicas=0,
    appendonly=True)``) for tests that restart or crash nodes; all are stopped after it."""
    require_binaries()
    clusters: list[LocalCluster] = []

    def make(masters: int = 3, replicas: int = 0, appendonly: bool = True) -> LocalCluster:
        cluster = LocalCluster()
        clusters.append(cluster)
        return cluster.start(masters, replicas, appendonly)

    yield make
    for cluster in clusters:
        cluster.stop()
