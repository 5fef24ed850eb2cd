"""A private three-master Redis Cluster on free loopback ports, for tests.

Started by hand rather than with ``redis-cli --cluster create`` (which polls the join once a
second): each node gets a third of the slots (``CLUSTER ADDSLOTSRANGE``), its own config epoch,
and node 1 meets the others. The floor is the server's own ``CLUSTER_WRITABLE_DELAY`` (a node
reports ``cluster_state:fail`` for its first 2 s), so a start takes about 2.1 s; tests share
one cluster per session (``tests/conftest.py``) and use key prefixes of their own.

The helpers change the cluster under the tests' feet the way operations do:
:meth:`RedisClusterServer.move_slot` reshards one slot (``CLUSTER SETSLOT`` … ``IMPORTING`` /
``MIGRATING`` / ``MIGRATE`` / ``NODE``), which makes Redis push an unsolicited ``sunsubscribe``
to the slot's sharded subscribers; :meth:`~RedisClusterServer.kill` and
:meth:`~RedisClusterServer.restart` take one master away (no replica: its slots are down until
it returns) and bring it back, empty, with its slots. ``cluster-require-full-coverage no``
keeps the other masters serving their slots meanwhile, as a production cluster that prefers
availability does.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.crc import key_slot

from tests.support.process import free_port

SLOTS = 16384
MASTERS = 3


@dataclass
class ClusterNode:
    port: int
    bus_port: int
    proc: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis:
        # Commands of their own (CLUSTER ..., PUBSUB ...) to this node, never redirected.
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)


@dataclass
class RedisClusterServer:
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="wshub-rc-")))
    nodes: list[ClusterNode] = field(default_factory=list)
    startup_seconds: float = 0.0
    """How long :meth:`start` took (what the session fixture adds to a run)."""

    @property
    def url(self) -> str:
        """The gateway's ``WSHUB_REDIS_URL`` for this cluster (every master as a start node)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def start(self) -> RedisClusterServer:
        try:
            return self._start()
        except BaseException:
            self.stop()  # no server left behind by a start that failed
            raise

    def _start(self) -> RedisClusterServer:
        began = time.monotonic()
        # The bus port is set explicitly: port + 10000, the default, may be taken or past 65535.
        self.nodes = [ClusterNode(free_port(), free_port()) for _ in range(MASTERS)]
        for node in self.nodes:
            self._spawn(node)
        for node in self.nodes:
            _wait_for_ping(node.port)
        share = SLOTS // MASTERS
        for n, node in enumerate(self.nodes):
            last = SLOTS - 1 if n == MASTERS - 1 else (n + 1) * share - 1
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", n * share, last)
                # Distinct epochs up front: no epoch collision to settle after the meet.
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", n + 1)
        with self.nodes[0].client() as first:
            for node in self.nodes[1:]:
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        self.wait_healthy()
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        for node in self.nodes:
            _end(node)
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- who owns what

    def owner(self, slot: int) -> ClusterNode:
        """The master serving *slot*, as node 1 sees it."""
        for start, end, master, *_ in self._slots():
            if start <= slot <= end:
                return self._node(int(master[1]))
        raise AssertionError(f"slot {slot} is not served")

    def owner_of(self, key: str) -> ClusterNode:
        """The master serving *key* (a key or a sharded channel: the same slot rule)."""
        return self.owner(slot_of(key))

    def others(self, *nodes: ClusterNode) -> list[ClusterNode]:
        return [node for node in self.nodes if node not in nodes]

    # -- resharding and failures

    def move_slot(self, slot: int, to: ClusterNode) -> None:
        """Reshard *slot* to *to*, keys and all, as ``redis-cli --cluster reshard`` does (the
        slot of a channel: ``move_slot(slot_of(channel), to)``)."""
        source = self.owner(slot)
        if source is to:
            return
        with source.client() as src, to.client() as dst:
            src_id, dst_id = _node_id(src), _node_id(dst)
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command(
                    "MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "REPLACE", "KEYS", *keys
                )
            # The new owner first, then the old one (whose subscribers Redis then unsubscribes),
            # then the bystander: every node agrees before this returns.
            for node in (to, source, *self.others(source, to)):
                with node.client() as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        self._wait_slot_agreed(slot, to)

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL one master: its slots (and the sharded channels in them) are gone."""
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait(5)
        node.proc = None

    def restart(self, node: ClusterNode) -> None:
        """Start a killed master again on its ports: it rejoins with its node id and its slots
        (from its nodes.conf), and without data (no persistence)."""
        assert node.proc is None
        self._spawn(node)
        _wait_for_ping(node.port)
        self.wait_healthy()

    def fail_over(self, master: ClusterNode) -> ClusterNode:
        """*master* dies and a replica takes its slots at another address, as a production
        shard with a replica fails over: a replica is started and synced first, then *master*
        is killed and the replica promoted (``CLUSTER FAILOVER TAKEOVER``). The replica takes
        the master's place in :attr:`nodes`; returned."""
        slots = [start for start, _, owner, *_ in self._slots() if int(owner[1]) == master.port]
        replica = ClusterNode(free_port(), free_port())
        try:
            self._spawn(replica)
            _wait_for_ping(replica.port)
            with master.client() as old, replica.client() as new:
                new.execute_command("CLUSTER", "MEET", "127.0.0.1", master.port, master.bus_port)
                master_id = _node_id(old)
                _until(lambda: _replicates(new, master_id), "the replica to join")
                _until(
                    lambda: new.info("replication").get("master_link_status") == "up",
                    "the replica to sync",
                )
                # Every master must know the replica, and be connected to it, before its master
                # goes, or the replica's claim to the slots would not reach them.
                replica_id = _node_id(new)
                _until(
                    lambda: all(_sees_replica(node, replica_id) for node in self.nodes),
                    "every master to see the replica",
                )
                self.kill(master)
                new.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
        except BaseException:
            _end(replica)  # not left running when the failover could not be staged
            raise
        self.nodes[self.nodes.index(master)] = replica
        # Every live node maps the dead master's slots to the replica. (Not wait_healthy(): on a
        # loaded machine a node may keep the dead master's flags in its view for a while.)
        for slot in slots:
            self._wait_slot_agreed(slot, replica, timeout=15)
        return replica

    def restart_all(self) -> None:
        """Every master killed and started again: the whole cluster comes back empty."""
        for node in self.nodes:
            if node.proc is not None:
                self.kill(node)
        for node in self.nodes:
            self._spawn(node)
        for node in self.nodes:
            _wait_for_ping(node.port)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 15) -> None:
        """Until every master says ``cluster_state:ok``, knows the other two as connected
        masters and maps every slot to a live one."""
        deadline = time.monotonic() + timeout
        problem = "not checked"
        while time.monotonic() < deadline:
            problem = self._problem()
            if not problem:
                return
            time.sleep(0.02)
        raise RuntimeError(f"Redis Cluster not healthy after {timeout} s: {problem}")

    # -- internals

    def _spawn(self, node: ClusterNode) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        log = (self.directory / f"redis-{node.port}.log").open("ab")
        node.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(node.port),
                "--cluster-port",
                str(node.bus_port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self.directory / f"nodes-{node.port}.conf"),
                # Short: a killed master is flagged failing (and a restarted one cleared) soon.
                "--cluster-node-timeout",
                "1000",
                "--cluster-require-full-coverage",
                "no",
                # A replica (fail_over) syncs at once, not after the default 5 s wait.
                "--repl-diskless-sync-delay",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()  # the child holds its own descriptor

    def _slots(self) -> list[list[object]]:
        with self.nodes[0].client() as client:
            return list(client.execute_command("CLUSTER", "SLOTS"))

    def _node(self, port: int) -> ClusterNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise AssertionError(f"no node on port {port}")

    def _problem(self) -> str:
        """Why the cluster is not healthy yet ("" when it is)."""
        for node in self.nodes:
            try:
                with node.client() as client:
                    info = client.execute_command("CLUSTER", "INFO")
                    view = client.execute_command("CLUSTER", "NODES")
            except redis.RedisError as exc:
                return f"{node.port}: {exc}"
            if "cluster_state:ok" not in info:
                return f"{node.port}: not ok yet"
            lines = [line.split() for line in view.splitlines() if line.strip()]
            live = [
                f for f in lines if "master" in f[2] and "fail" not in f[2] and f[7] == "connected"
            ]
            if len(live) != MASTERS:
                return f"{node.port}: sees {len(live)} live masters"
            served = sum(_slot_count(f[8:]) for f in live)
            if served != SLOTS:
                return f"{node.port}: {served} slots served"
        return ""

    def _wait_slot_agreed(self, slot: int, to: ClusterNode, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            owners = set()
            for node in self.nodes:
                with node.client() as client:
                    for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                        if start <= slot <= end:
                            owners.add(int(master[1]))
            if owners == {to.port}:
                return
            time.sleep(0.02)
        raise RuntimeError(f"the nodes do not agree that {to.port} serves slot {slot}")


def slot_of(key: str) -> int:
    """The slot of a key or a sharded channel (CRC16 of its hash tag, as the server computes)."""
    return key_slot(key.encode())


def _node_id(client: redis.Redis) -> str:
    return str(client.execute_command("CLUSTER", "MYID"))


def _sees_replica(node: ClusterNode, replica_id: str) -> bool:
    """Whether *node* knows *replica_id* as a connected replica (not in a handshake)."""
    with node.client() as client:
        view = str(client.execute_command("CLUSTER", "NODES"))
    for line in view.splitlines():
        fields = line.split()
        if fields and fields[0] == replica_id:
            return "slave" in fields[2] and fields[7] == "connected"
    return False


def _replicates(client: redis.Redis, master_id: str) -> bool:
    """Ask *client*'s node to replicate *master_id*; False while it does not know it yet."""
    try:
        client.execute_command("CLUSTER", "REPLICATE", master_id)
    except redis.ResponseError:
        return False
    return True


def _until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis Cluster: waited {timeout} s for {what}")
        time.sleep(0.05)


def _slot_count(ranges: list[str]) -> int:
    count = 0
    for item in ranges:
        if item.startswith("["):  # a slot being imported or migrated: counted once, elsewhere
            continue
        start, _, end = item.partition("-")
        count += int(end or start) - int(start) + 1
    return count


def _wait_for_ping(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with redis.Redis(port=port, socket_timeout=0.5) as client:
                if client.ping():
                    return
        except redis.ConnectionError:
            time.sleep(0.01)
    raise RuntimeError(f"redis-server on {port} did not start")


def _end(node: ClusterNode) -> None:
    if node.proc is not None:
        node.proc.kill()
        node.proc.wait(5)
        node.proc = None
