"""The local Redis Cluster helper: it serves every slot, redis-py's cluster clients (sync and
asyncio) work against it, a restarted node keeps its append-only data, a crashed master's
replica takes over, and the fixtures skip (or, under REQUIRE_CLUSTER=1, fail) without Redis."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from tests.redis_cluster import LocalCluster, flush, require_binaries

pytestmark = pytest.mark.timeout(30)

# INCRBY the first key and copy the total into the second: both must be on one node.
COUNT_AND_COPY = """
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], total)
return total
"""


def direct(address: tuple[str, int]) -> redis.Redis:
    """A plain client on one node (no redirections followed)."""
    host, port = address
    return redis.Redis(host=host, port=port)


def node_of(cluster: LocalCluster, client: redis.cluster.RedisCluster, key: str) -> int:
    """The index in ``cluster.nodes`` of the master that serves ``key``."""
    served_by = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
    return cluster.nodes.index((served_by.host, served_by.port))


def test_three_masters_serve_every_slot_and_keys_land_on_each(redis_cluster: LocalCluster) -> None:
    flush(redis_cluster)
    host, port = redis_cluster.nodes[0]
    assert redis_cluster.url == f"redis://{host}:{port}/0"
    assert redis_cluster.masters() == redis_cluster.nodes
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    try:
        assert client.cluster_info()["cluster_slots_ok"] == "16384"
        for i in range(30):
            client.set(f"key:{i}", i)
        assert [client.get(f"key:{i}") for i in range(30)] == [str(i).encode() for i in range(30)]
    finally:
        client.close()
    held = []
    for address in redis_cluster.nodes:
        with direct(address) as node:
            held.append(node.dbsize())
    assert sum(held) == 30
    assert all(count > 0 for count in held), held


def test_flush_empties_every_master(redis_cluster: LocalCluster) -> None:
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    try:
        for i in range(30):
            client.set(f"flushed:{i}", i)
    finally:
        client.close()
    flush(redis_cluster)
    counts = []
    for address in redis_cluster.nodes:
        with direct(address) as node:
            counts.append(node.dbsize())
    assert counts == [0, 0, 0]


def test_a_lua_script_runs_on_keys_sharing_a_hash_tag(redis_cluster: LocalCluster) -> None:
    flush(redis_cluster)
    assert key_slot(b"{p0}:count") == key_slot(b"{p0}:copy") != key_slot(b"{p1}:count")
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    try:
        count_and_copy = client.register_script(COUNT_AND_COPY)
        assert count_and_copy(keys=["{p0}:count", "{p0}:copy"], args=[5]) == 5
        assert count_and_copy(keys=["{p0}:count", "{p0}:copy"], args=[3]) == 8
        assert count_and_copy(keys=["{p1}:count", "{p1}:copy"], args=[2]) == 2
        assert client.mget("{p0}:count", "{p0}:copy") == [b"8", b"8"]
        assert client.get("{p1}:copy") == b"2"
        with pytest.raises(RedisClusterException, match="all keys must map to the same key slot"):
            count_and_copy(keys=["{p0}:count", "{p1}:copy"], args=[1])
    finally:
        client.close()


async def test_the_asyncio_cluster_client_sets_gets_and_runs_scripts(
        redis_cluster: LocalCluster) -> None:
    flush(redis_cluster)
    client = redis.asyncio.cluster.RedisCluster.from_url(redis_cluster.url)
    try:
        for i in range(30):
            await client.set(f"async:{i}", i)
        assert [await client.get(f"async:{i}") for i in range(30)] == [
            str(i).encode() for i in range(30)]
        count_and_copy = client.register_script(COUNT_AND_COPY)
        assert await count_and_copy(keys=["{p0}:count", "{p0}:copy"], args=[4]) == 4
        assert await client.get("{p0}:copy") == b"4"
    finally:
        await client.aclose()


@pytest.mark.parametrize(("appendonly", "after_restart"), [(True, b"kept"), (False, None)])
def test_restart_node_keeps_a_key_only_with_appendonly(
        redis_cluster_factory: Callable[..., LocalCluster], appendonly: bool,
        after_restart: bytes | None) -> None:
    cluster = redis_cluster_factory(masters=3, appendonly=appendonly)
    client = redis.cluster.RedisCluster.from_url(cluster.url)
    try:
        client.set("restarted", "kept")
        i = node_of(cluster, client, "restarted")
    finally:
        client.close()
    with direct(cluster.nodes[i]) as node:
        pid_before = node.info("server")["process_id"]
    cluster.restart_node(i)
    with direct(cluster.nodes[i]) as node:
        assert node.info("server")["process_id"] != pid_before
        assert node.get("restarted") == after_restart
    assert cluster.masters() == cluster.nodes


def test_failover_promotes_the_replica_which_has_a_key_written_with_wait(
        redis_cluster_factory: Callable[..., LocalCluster]) -> None:
    cluster = redis_cluster_factory(masters=3, replicas=1)
    assert len(cluster.nodes) == 6
    assert cluster.masters() == cluster.nodes[:3]
    client = redis.cluster.RedisCluster.from_url(cluster.url)
    try:
        # One key on the first master, so the failover also moves what url points at.
        key = next(f"survivor:{n}" for n in range(1000)
                   if node_of(cluster, client, f"survivor:{n}") == 0)
    finally:
        client.close()
    with direct(cluster.nodes[0]) as master:
        master.set(key, "written")
        assert master.execute_command("WAIT", 1, 5000) == 1  # the replica has it

    promoted = cluster.failover(0)

    assert promoted == 3  # node masters + k replicates node k
    assert cluster.masters() == [cluster.nodes[1], cluster.nodes[2], cluster.nodes[3]]
    host, port = cluster.nodes[1]
    assert cluster.url == f"redis://{host}:{port}/0"
    client = redis.cluster.RedisCluster.from_url(cluster.url)
    try:
        assert client.get(key) == b"written"
    finally:
        client.close()
    cluster.restart_node(0)  # back, as the new master's replica
    assert cluster.masters() == [cluster.nodes[1], cluster.nodes[2], cluster.nodes[3]]
    with direct(cluster.nodes[0]) as old_master:
        assert old_master.info("replication")["role"] == "slave"
        assert old_master.info("replication")["master_port"] == cluster.nodes[3][1]


def test_a_cluster_that_stays_broken_is_a_clear_error_with_the_logs(
        redis_cluster_factory: Callable[..., LocalCluster]) -> None:
    cluster = redis_cluster_factory(masters=3)
    host, port = cluster.nodes[1]
    with direct(cluster.nodes[1]) as node:
        os.kill(node.info("server")["process_id"], signal.SIGKILL)  # behind the helper's back
    with pytest.raises(RuntimeError) as e:
        cluster.wait_ok(timeout=3)
    message = str(e.value)
    assert message.startswith("Redis Cluster: no cluster_state:ok on every node after 3s; last: ")
    assert f"--- {host}:{port} (redis.log, last lines)" in message
    cluster.restart_node(1)  # and it heals
    assert cluster.masters() == cluster.nodes


def test_stop_ends_every_process_it_started(
        redis_cluster_factory: Callable[..., LocalCluster]) -> None:
    cluster = redis_cluster_factory(masters=3)
    pids = []
    for address in cluster.nodes:
        with direct(address) as node:
            pids.append(node.info("server")["process_id"])
    cluster.stop()
    assert [Path(f"/proc/{pid}").exists() for pid in pids] == [False, False, False]
    assert cluster.nodes == []
    cluster.stop()  # twice is fine


def test_missing_binaries_skip_unless_required(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no redis-server there
    monkeypatch.delenv("REQUIRE_CLUSTER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="need redis-server and redis-cli on PATH"):
        require_binaries()
    monkeypatch.setenv("REQUIRE_CLUSTER", "1")
    with pytest.raises(pytest.fail.Exception, match="REQUIRE_CLUSTER is set, so that is a failure"):
        require_binaries()
