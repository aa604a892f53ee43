#!/bin/sh
# Runs on rank 0 against the swarm (mpiswarm up -- launch.sh): one container per node on an
# overlay network, each named after its node (mpi-<node>) and serving a tiny remote shell; then
# Open MPI's mpirun (4.1's orterun or 5's PRRTE launcher) in the local container starts the MPI
# program across all of them, the containers finding each other by their service names. Exits with the MPI program's status.
#
#   launch.sh [PROGRAM [ARGS...]]     default: /usr/local/bin/ring (the image also has pingpong)
#
# The overlay's MTU is the one mpiswarm chose for this swarm (MPISWARM_OVERLAY_MTU, see README:
# the overlay's MTU); without it Docker's default (1450) applies. MPI_ORTERUN_ARGS: more
# arguments for orterun (e.g. "--mca mpi_yield_when_idle 1" where ranks share cores).
set -u
[ $# -gt 0 ] || set -- /usr/local/bin/ring
image=${MPI_IMAGE:-mpiswarm/mpi-ring:latest}
pool=${MPI_NET_CIDR:-10.128.0.0/12}     # mpiswarm's --address-pool: the overlay's addresses
nodes=$(docker node ls --format '{{.Hostname}}' | sort)
n=$(echo "$nodes" | wc -l)
me=$(hostname)

cleanup() {
  for h in $nodes; do docker service rm "mpi-$h" >/dev/null 2>&1; done
  docker network rm mpinet >/dev/null 2>&1
}
trap cleanup EXIT

docker network create --driver overlay --attachable \
  ${MPISWARM_OVERLAY_MTU:+--opt com.docker.network.driver.mtu=$MPISWARM_OVERLAY_MTU} mpinet >/dev/null || exit 1
for h in $nodes; do
  docker service create --detach --quiet --no-resolve-image --name "mpi-$h" --hostname "mpi-$h" --network mpinet \
    --endpoint-mode dnsrr --constraint "node.hostname==$h" --env 'NODE={{.Node.Hostname}}' \
    "$image" nc -ll -p 2222 -e sh >/dev/null || exit 1
done

# Every container running, and ours found on this node.
tries=0
while :; do
  running=$(docker service ls --filter name=mpi- --format '{{.Replicas}}' | grep -c '^1/1')
  cid=$(docker ps -q --filter "label=com.docker.swarm.service.name=mpi-$me" | head -n 1)
  [ "$running" -eq "$n" ] && [ -n "$cid" ] && break
  tries=$((tries + 1))
  [ $tries -gt 600 ] && { echo "launch.sh: containers not running after 60 s" >&2; exit 1; }
  sleep 0.1
done
hosts=$(for h in $nodes; do printf 'mpi-%s,' "$h"; done)
hosts=${hosts%,}
echo "launch.sh: $n containers up ($hosts); running the MPI program"

# shellcheck disable=SC2086 # MPI_ORTERUN_ARGS: several words
docker exec "$cid" mpirun.openmpi -np "$n" --host "$hosts" --map-by node ${MPI_ORTERUN_ARGS:-} \
  --mca btl self,tcp --mca btl_tcp_if_include "$pool" --mca oob_tcp_if_include "$pool" \
  "$@"
