#!/usr/bin/env bash
# Builds the LAMMPS image without any registry: this machine's LAMMPS (the `lammps` Debian
# package's lmp, and every library it loads: liblammps, FFTW, ...) on the same base as the MPI
# example's image (../mpi-in-containers/mpi-image: Open MPI's runtime, busybox, the rsh agent),
# with in.lj at /usr/local/share/mpiswarm-lammps/in.lj. Written as a `docker save` archive;
# cached: rebuilt only when the inputs or a package's version change.
#
#   build-image.sh [OUT.tar]      default: ${XDG_CACHE_HOME:-$HOME/.cache}/mpiswarm/lammps.tar
set -euo pipefail
here=$(dirname "$(readlink -f "$0")")
mpi_image=$here/../mpi-in-containers/mpi-image
out=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/mpiswarm/lammps.tar}
tag=mpiswarm/lammps:latest

dpkg-query -W lammps >/dev/null 2>&1 ||
  { echo "build-image.sh: LAMMPS is not installed on $(hostname) (apt-get install lammps)" >&2; exit 1; }
key=$( (cat "$here/in.lj" "$0"; "$mpi_image" key lammps) | sha256sum | cut -d' ' -f1)
if [ -f "$out" ] && [ "$(cat "$out.key" 2>/dev/null)" = "$key" ]; then
  echo "$out (cached)"
  exit 0
fi
mkdir -p "$(dirname "$out")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
install -D -m 0644 "$here/in.lj" "$work/usr/local/share/mpiswarm-lammps/in.lj"
# One OpenMP thread per rank unless the run says otherwise: ranks are what these jobs spread.
MPI_IMAGE_ENV="OMP_NUM_THREADS=1" "$mpi_image" build "$out" "$tag" "$work" lammps
echo "$key" > "$out.key"
chmod 0644 "$out" "$out.key"
echo "$out"
