#!/usr/bin/env bash
# LAMMPS across the swarm inside a job on N nodes: build (or reuse) the image, start the swarm
# with it loaded on every node (no registry), run LAMMPS in one container per node (launch.sh),
# tear everything down; print LAMMPS's output, then the loop time and timesteps/s of its last run.
# Exits with LAMMPS's status.
#
#   MPIRUN="mpirun -np 3 --map-by node" examples/lammps/run.sh
#   MPISWARM_ARGS="--net host" ...       the host path (Debian 13's stack; docs/networking.md: the host path)
#   LAMMPS_DIR=DIR LAMMPS_INPUT=FILE ...  your own input, in a directory every node sees (launch.sh)
#   LAMMPS_ARGS="-var steps 200" ...      more arguments for lmp
#   MPI_ORTERUN_ARGS, MPI_NET_CIDR         for the containers' mpirun (../mpi-in-containers/launch.sh)
set -euo pipefail
here=$(dirname "$(readlink -f "$0")")
image=${LAMMPS_IMAGE_TAR:-$("$here/build-image.sh" | sed 's/ (cached)$//')}
read -r -a mpirun <<< "${MPIRUN:-mpirun --map-by node}"
read -r -a extra <<< "${MPISWARM_ARGS:-}"
# launch.sh's settings go as arguments: launchers do not pass this environment to rank 0.
[ -z "${LAMMPS_DIR:-}" ] || LAMMPS_DIR=$(cd "$LAMMPS_DIR" && pwd -P)
settings=()
for v in LAMMPS_DIR LAMMPS_INPUT LAMMPS_ARGS MPI_ORTERUN_ARGS MPI_NET_CIDR; do
  if [ -n "${!v:-}" ]; then settings+=("$v=${!v}"); fi
done
set +e
"${mpirun[@]}" "${MPISWARM:-mpiswarm}" up "${extra[@]}" --load "$image" -- env "${settings[@]}" "$here/launch.sh" |
  awk '{ print; fflush() }
       # "Loop time of 13.9 on 3 procs for 1000 steps with 32000 atoms"
       /^Loop time of / { loop = $4; procs = $6; steps = $9; atoms = $12 }
       # "Performance: 31040.533 tau/day, 71.853 timesteps/s" (newer versions add atom-step/s)
       /^Performance: / { for (i = 2; i <= NF; i++) if ($i ~ /^timesteps\/s/) tps = $(i - 1) }
       END {
         if (loop == "") { print "run.sh: no \"Loop time\" line in LAMMPS'"'"'s output: the run did not finish (see above)" > "/dev/stderr"; exit 1 }
         printf "run.sh: LAMMPS loop time %s s, %s timesteps/s (%s steps, %s atoms, %s procs)\n", loop, tps, steps, atoms, procs
       }'
status=("${PIPESTATUS[@]}")
[ "${status[0]}" -ne 0 ] && exit "${status[0]}"
exit "${status[1]}"
