#!/usr/bin/env bash
# The whole example inside a job on N nodes: build (or reuse) the image, start the swarm with it
# loaded on every node (no registry), run the MPI program across one container per node, tear
# everything down, exit with the program's status.
#
#   MPIRUN="mpirun -np 4 --map-by node" examples/mpi-in-containers/run.sh
#   MPISWARM_ARGS="--net host" ...       the host path (docs/networking.md: the host path)
set -euo pipefail
here=$(dirname "$(readlink -f "$0")")
image=${MPI_IMAGE_TAR:-$("$here/build-image.sh" | sed 's/ (cached)$//')}
read -r -a mpirun <<< "${MPIRUN:-mpirun --map-by node}"
read -r -a extra <<< "${MPISWARM_ARGS:-}"
exec "${mpirun[@]}" "${MPISWARM:-mpiswarm}" up "${extra[@]}" --load "$image" -- "$here/launch.sh"
