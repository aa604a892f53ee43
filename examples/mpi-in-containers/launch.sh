#!/bin/sh
# Runs on rank 0 against the swarm (mpiswarm up -- launch.sh): one container per node, each
# serving a tiny remote shell (keyed by a swarm secret); then Open MPI's mpirun (4.1's orterun or
# 5's PRRTE launcher) in the local container starts the MPI program across all of them. On the
# overlay path (mpiswarm up --net overlay) the containers share an overlay network and find each
# other by service name (mpi-<node>); on the host path (--net host, MPISWARM_NET=host) they use
# their nodes' interfaces and addresses. Exits with the MPI program's status.
#
#   launch.sh [PROGRAM [ARGS...]]     default: /usr/local/bin/ring (the image also has pingpong)
#
# The overlay's MTU is the one mpiswarm chose for this swarm (MPISWARM_OVERLAY_MTU, see
# docs/networking.md: MTU of the overlay path); without it Docker's default (1450)
# applies. MPI_ORTERUN_ARGS: more arguments for orterun (e.g. "--mca mpi_yield_when_idle 1"
# where ranks share cores).
# MPI_IMAGE: the image (loaded by mpiswarm up --load); MPI_SERVICE_ARGS: more arguments for each
# container's `docker service create` (words without spaces, e.g. a bind mount and --workdir:
# docker exec and the ranks start in the containers' working directory).
set -u
[ $# -gt 0 ] || set -- /usr/local/bin/ring
image=${MPI_IMAGE:-mpiswarm/mpi-ring:latest}
pool=${MPI_NET_CIDR:-10.128.0.0/12}     # mpiswarm's --address-pool: the overlay's addresses
nodes=$(docker node ls --format '{{.Hostname}}' | sort)
n=$(echo "$nodes" | wc -l)
me=$(hostname)
key=mpi-rsh-$$

cleanup() {
  for h in $nodes; do docker service rm "mpi-$h" >/dev/null 2>&1; done
  docker network rm mpinet >/dev/null 2>&1
  docker secret rm "$key" >/dev/null 2>&1
}
trap cleanup EXIT

# The remote shell's key: random, a swarm secret given only to this job's containers.
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | docker secret create "$key" - >/dev/null || exit 1
if [ "${MPISWARM_NET:-overlay}" = host ]; then
  # --net host: every container uses its node's interfaces; no overlay and no DNS across hosts,
  # so each container gets the others' names (mpi-<node>) mapped to their nodes' addresses.
  network=
  for h in $nodes; do
    network="$network --host mpi-$h:$(docker node inspect "$h" --format '{{.Status.Addr}}')"
  done
else
  docker network create --driver overlay --attachable \
    ${MPISWARM_OVERLAY_MTU:+--opt com.docker.network.driver.mtu=$MPISWARM_OVERLAY_MTU} mpinet >/dev/null || exit 1
  network="--network mpinet --endpoint-mode dnsrr"
fi
for h in $nodes; do
  # shellcheck disable=SC2086 # $network and MPI_SERVICE_ARGS: several words or none
  docker service create --detach --quiet --no-resolve-image --name "mpi-$h" --hostname "mpi-$h" $network \
    ${MPI_SERVICE_ARGS:-} \
    --secret "source=$key,target=mpi-rsh" --constraint "node.hostname==$h" --env 'NODE={{.Node.Hostname}}' \
    "$image" nc -ll -p 2222 -e /usr/local/bin/rsh-serve >/dev/null || exit 1
done

# Every container running, and ours found on this node.
tries=0
while :; do
  running=$(docker service ls --filter name=mpi- --format '{{.Replicas}}' | grep -c '^1/1')
  cid=$(docker ps -q --filter "label=com.docker.swarm.service.name=mpi-$me" | head -n 1)
  [ "$running" -eq "$n" ] && [ -n "$cid" ] && break
  tries=$((tries + 1))
  if [ $tries -gt 600 ]; then
    # Each node's latest task says why (Docker's error, e.g. a bind mount's missing source).
    echo "launch.sh: containers not running after 60 s:" >&2
    for h in $nodes; do
      docker service ps "mpi-$h" --no-trunc --format "  mpi-$h on $h: {{.CurrentState}} {{.Error}}" 2>&1 | head -n 1 >&2
    done
    exit 1
  fi
  sleep 0.1
done
hosts=$(for h in $nodes; do printf 'mpi-%s,' "$h"; done)
if [ "${MPISWARM_NET:-overlay}" = host ]; then
  # MPI picks the nodes' interfaces itself (MPI_NET_CIDR narrows it, e.g. to the fast network).
  if [ -n "${MPI_NET_CIDR:-}" ]; then
    nets="--mca btl_tcp_if_include $MPI_NET_CIDR --mca oob_tcp_if_include $MPI_NET_CIDR"
  else
    nets=
  fi
else
  nets="--mca btl_tcp_if_include $pool"
  # Open MPI 4.1's launcher takes the pool for its own traffic too; 5's (PRRTE) matches no
  # interface to so wide a subnet and ignores it with a warning, so it is left to choose.
  docker exec "$cid" sh -c 'command -v prterun' >/dev/null || nets="$nets --mca oob_tcp_if_include $pool"
fi
hosts=${hosts%,}
echo "launch.sh: $n containers up ($hosts); running the MPI program"

# shellcheck disable=SC2086 # MPI_ORTERUN_ARGS and $nets: several words
docker exec "$cid" mpirun.openmpi -np "$n" --host "$hosts" --map-by node ${MPI_ORTERUN_ARGS:-} \
  --mca btl self,tcp $nets "$@"
