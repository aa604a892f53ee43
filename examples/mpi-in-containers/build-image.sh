#!/usr/bin/env bash
# Builds the image of the containerized MPI workload without any registry (mpi-image: Open MPI's
# runtime as installed on this machine and every library it loads, busybox, the rsh agent), with
# the ring program and the pingpong benchmark compiled here with mpicc. Written as a `docker save`
# archive; cached: rebuilt only when the inputs or Open MPI's version change.
#
#   build-image.sh [OUT.tar]      default: ${XDG_CACHE_HOME:-$HOME/.cache}/mpiswarm/mpi-ring.tar
set -euo pipefail
here=$(dirname "$(readlink -f "$0")")
out=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/mpiswarm/mpi-ring.tar}
tag=mpiswarm/mpi-ring:latest

key=$( (cat "$here/ring.c" "$here/pingpong.c" "$0"; "$here/mpi-image" key) | sha256sum | cut -d' ' -f1)
if [ -f "$out" ] && [ "$(cat "$out.key" 2>/dev/null)" = "$key" ]; then
  echo "$out (cached)"
  exit 0
fi
mkdir -p "$(dirname "$out")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/usr/local/bin"
mpicc.openmpi -O2 -o "$work/usr/local/bin/ring" "$here/ring.c"
mpicc.openmpi -O2 -o "$work/usr/local/bin/pingpong" "$here/pingpong.c"
"$here/mpi-image" build "$out" "$tag" "$work"
echo "$key" > "$out.key"
chmod 0644 "$out" "$out.key"
echo "$out"
