"""A private Redis primary with one replica and one Sentinel, on free loopback ports.

Quorum 1 and a one-second down-after: the single Sentinel may fail over on its own. Tests force
a failover with :meth:`RedisSentinelServer.failover` (``SENTINEL FAILOVER``: no need to wait
for the primary to look dead) and find the primary by asking the Sentinel, as the gateway does.
Ready in well under a second: the Sentinel answers once it has seen the primary.
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

from tests.support.process import free_port

SERVICE = "wshub"


@dataclass
class RedisSentinelServer:
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="wshub-rs-")))
    ports: list[int] = field(default_factory=list)
    """The two data nodes (the first starts as the primary)."""
    sentinel_port: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/0/{SERVICE}"

    def start(self) -> RedisSentinelServer:
        try:
            return self._start()
        except BaseException:
            self.stop()  # no server left behind by a start that failed
            raise

    def _start(self) -> RedisSentinelServer:
        self.ports = [free_port(), free_port()]
        self.sentinel_port = free_port()
        primary, replica = self.ports
        self._spawn("primary", ["--port", str(primary)])
        self._spawn("replica", ["--port", str(replica), "--replicaof", "127.0.0.1", str(primary)])
        config = self.directory / "sentinel.conf"  # Sentinel rewrites its file: a copy of ours
        config.write_text(
            f"port {self.sentinel_port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
        )
        self._spawn("sentinel", [str(config), "--sentinel"], data=False)
        # The Sentinel reads its instances' INFO every 10 s: a replica that was the primary a
        # moment ago would stay "no good replica" to fail over to for that long.
        self._wait(self._fast_info, "the Sentinel")
        self._wait(
            lambda: self._settled(primary), "the Sentinel to see the primary and the replica"
        )
        return self

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(5)
        self.procs.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    def sentinel(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_port, decode_responses=True, socket_timeout=5)

    def primary(self) -> int:
        """The primary's port, as the Sentinel sees it."""
        with self.sentinel() as sentinel:
            _, port = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def failover(self) -> int:
        """Promote the replica and turn the old primary into its replica; the new primary's port.

        In two steps, :meth:`promote` then :meth:`demote`, between which the old primary still
        takes the writes of clients connected to it (a split brain, as in a real failover).
        """
        new = self.promote()
        self.demote(new)
        return new

    def promote(self) -> int:
        """``SENTINEL FAILOVER``: the replica becomes the primary the Sentinel names."""
        old = self.primary()
        new = next(port for port in self.ports if port != old)
        with self.sentinel() as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
        self._wait(lambda: self._promoted(new), "the promotion")
        return new

    def demote(self, new: int) -> None:
        """What the Sentinel does to an old primary that comes back, without its 8-10 s wait
        (``sentinelSendSlaveOf``): replicate the new primary, and drop the clients so that they
        reconnect, ask the Sentinel and find the new primary. Writes the old primary took
        meanwhile are discarded by the resync."""
        old = next(port for port in self.ports if port != new)
        with (
            redis.Redis(port=old, decode_responses=True, socket_timeout=5) as client,
            client.pipeline(transaction=True) as tx,
        ):
            tx.execute_command("REPLICAOF", "127.0.0.1", new)
            tx.execute_command("CLIENT", "KILL", "TYPE", "normal")
            tx.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            tx.execute()
        self._wait(lambda: self._settled(new), "the old primary to follow")

    # -- internals

    def _spawn(self, name: str, args: list[str], *, data: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        storage = ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        # A replica's first sync starts at once (the default waits 5 s for more replicas).
        storage += ["--repl-diskless-sync-delay", "0"]
        log = (self.directory / f"{name}.log").open("ab")
        self.procs.append(
            subprocess.Popen(
                [binary, *args, "--bind", "127.0.0.1", *(storage if data else [])],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()

    def _fast_info(self) -> bool:
        with self.sentinel() as sentinel:
            sentinel.execute_command("SENTINEL", "DEBUG", "INFO-PERIOD", 100)
        return True

    def _settled(self, primary: int) -> bool:
        """*primary* is the Sentinel's primary, the other node replicates it, and the Sentinel
        has seen that replica (it can fail over to it)."""
        replica = next(port for port in self.ports if port != primary)
        if not (self._promoted(primary) and self._following(replica, primary)):
            return False
        with self.sentinel() as sentinel:
            replicas = [
                _fields(entry)
                for entry in sentinel.execute_command("SENTINEL", "REPLICAS", SERVICE)
            ]
        return any(
            int(r["port"]) == replica and r["flags"] == "slave" and r["master-link-status"] == "ok"
            for r in replicas
        )

    def _promoted(self, port: int) -> bool:
        """*port* takes writes, and the Sentinel names it with no failover in progress."""
        with redis.Redis(port=port, decode_responses=True, socket_timeout=1) as client:
            if client.execute_command("ROLE")[0] != "master":
                return False
        with self.sentinel() as sentinel:
            master = _fields(sentinel.execute_command("SENTINEL", "MASTER", SERVICE))
        return master["flags"] == "master" and int(master["port"]) == port

    def _following(self, replica: int, primary: int) -> bool:
        with redis.Redis(port=replica, decode_responses=True, socket_timeout=1) as client:
            info = client.info("replication")
        return info.get("master_port") == primary and info.get("master_link_status") == "up"

    def _wait(self, done: Callable[[], bool], what: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if done():
                    return
            except (redis.RedisError, ValueError, TypeError):
                pass  # not up yet, or no answer to GET-MASTER-ADDR-BY-NAME yet
            time.sleep(0.02)
        log = (self.directory / "sentinel.log").read_text(errors="replace").splitlines()
        raise RuntimeError(
            f"Redis Sentinel setup: timed out waiting for {what}; the Sentinel's last words:\n"
            + "\n".join(log[-15:])
        )


def _fields(reply: object) -> dict[str, str]:
    """A Sentinel reply (a flat list of name, value, ... or a dict under RESP3) as a dict."""
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    assert isinstance(reply, list)
    return {str(reply[i]): str(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}
