#!/bin/sh
# compose.yaml's cluster-init: makes a Redis Cluster of the nodes named as arguments (host
# names, each serving on port 6379) with CLUSTER_REPLICAS replicas per master (default 1) and
# waits until every node reports cluster_state:ok.
#
# Safe to run on every `docker compose up`. When the first node already has slots it creates
# nothing: it reintroduces every node to every other at its current address (a container can
# come back with a new one, and a node looks for its peers at the addresses in its nodes.conf),
# waits for cluster_state:ok, then points each replica at its master's current address.
set -eu
port=6379
replicas="${CLUSTER_REPLICAS:-1}"
[ "$#" -ge 3 ] || { echo "usage: $0 HOST HOST HOST [HOST...]" >&2; exit 2; }

ip_of() { getent hosts "$1" | awk '{ print $1; exit }'; }

all_ok() {
    for host in "$@"; do
        redis-cli -h "$host" -p "$port" cluster info | grep -q '^cluster_state:ok' || return 1
    done
}

wait_ok() {
    for _ in $(seq 60); do
        all_ok "$@" && return 0
        sleep 1
    done
    echo "the cluster is not ok after 60 s; as $1 sees it:" >&2
    redis-cli -h "$1" -p "$port" cluster nodes >&2
    exit 1
}

# redis-cli --cluster create and CLUSTER MEET take IP addresses, not host names.
addresses=""
for host in "$@"; do
    ip="$(ip_of "$host")"
    [ -n "$ip" ] || { echo "cannot resolve $host" >&2; exit 1; }
    addresses="$addresses $ip"
done

assigned="$(redis-cli -h "$1" -p "$port" cluster info | tr -d '\r' |
    sed -n 's/^cluster_slots_assigned://p')"
[ -n "$assigned" ] || { echo "no CLUSTER INFO from $1: is it a cluster node?" >&2; exit 1; }

if [ "$assigned" = 0 ]; then
    echo "creating the cluster of $* ($addresses), $replicas replica(s) per master"
    # shellcheck disable=SC2046  # one word per address
    redis-cli --cluster create $(for ip in $addresses; do printf '%s:%s ' "$ip" "$port"; done) \
        --cluster-replicas "$replicas" --cluster-yes
    wait_ok "$@"
else
    echo "the cluster exists ($assigned slots assigned); introducing its nodes at their addresses"
    for host in "$@"; do
        own="$(ip_of "$host")"
        for ip in $addresses; do
            [ "$ip" = "$own" ] || redis-cli -h "$host" -p "$port" cluster meet "$ip" "$port" >/dev/null
        done
    done
    wait_ok "$@"
    # A replica can go on replicating from its master's old address even once the cluster
    # knows the new one: CLUSTER REPLICATE (the same master) points it at the new one.
    for host in "$@"; do
        master="$(redis-cli -h "$host" -p "$port" cluster nodes |
            awk '$3 ~ /myself/ && $3 ~ /slave/ { print $4 }')"
        [ -z "$master" ] || redis-cli -h "$host" -p "$port" cluster replicate "$master" >/dev/null
    done
fi
echo "cluster_state:ok on $*"
