#!/bin/sh
# Runs on rank 0 against the swarm (mpiswarm up -- launch.sh): LAMMPS in one container per node,
# started by the MPI example's launch.sh (its remote shell, both network paths), with the
# LAMMPS image. Exits with LAMMPS's status.
#
#   LAMMPS_DIR=DIR       a directory every node sees at the same path (a shared filesystem):
#                        bind-mounted there in every container and LAMMPS's working directory, so
#                        the input is read from it and log.lammps, dumps and restarts land in it
#   LAMMPS_INPUT=FILE    the input (relative to LAMMPS_DIR, or a path in the image); default: the
#                        example's in.lj (in LAMMPS_DIR if given, else the image's copy)
#   LAMMPS_ARGS="..."    more arguments for lmp, e.g. "-var steps 200"
#   MPI_ORTERUN_ARGS     more arguments for the containers' mpirun (see ../mpi-in-containers)
set -u
here=$(dirname "$(readlink -f "$0")")
export MPI_IMAGE="${MPI_IMAGE:-mpiswarm/lammps:latest}"
if [ -n "${LAMMPS_DIR:-}" ]; then
  # The same absolute path in every container as on the nodes (no spaces: launch.sh splits words).
  dir=$(cd "$LAMMPS_DIR" 2>/dev/null && pwd -P) ||
    { echo "launch.sh: LAMMPS_DIR $LAMMPS_DIR is not a directory on $(hostname); it must be on a filesystem every node sees" >&2; exit 1; }
  input=${LAMMPS_INPUT:-in.lj}
  case $input in
    /*) ;;  # a path in the image
    *) [ -r "$dir/$input" ] ||
         { echo "launch.sh: no input $input in $dir on $(hostname) (LAMMPS_INPUT names it)" >&2; exit 1; } ;;
  esac
  export MPI_SERVICE_ARGS="--mount type=bind,source=$dir,target=$dir --workdir $dir"
else
  input=${LAMMPS_INPUT:-/usr/local/share/mpiswarm-lammps/in.lj}
  export MPI_SERVICE_ARGS="--workdir /tmp"
fi
# shellcheck disable=SC2086 # LAMMPS_ARGS: several words
exec "$here/../mpi-in-containers/launch.sh" lmp -in "$input" ${LAMMPS_ARGS:-}
