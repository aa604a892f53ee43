#!/usr/bin/env bash
# Builds the image of the containerized MPI workload without any registry: Open MPI's runtime as
# installed on this machine (its Debian packages' files and every library they load), the ring
# program and the pingpong benchmark compiled here with mpicc, busybox for a shell, and the
# nc-based rsh agent. Written as a `docker save` archive; cached: rebuilt only when the inputs or Open MPI's version change.
#
#   build-image.sh [OUT.tar]      default: ${XDG_CACHE_HOME:-$HOME/.cache}/mpiswarm/mpi-ring.tar
set -euo pipefail
here=$(dirname "$(readlink -f "$0")")
root=$(readlink -f "$here/../..")
out=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/mpiswarm/mpi-ring.tar}
tag=mpiswarm/mpi-ring:latest
# Open MPI 4.1 (Debian 12) or 5 (Debian 13: PRRTE inside libopenmpi40, PMIx 5). The image's
# environment names the rsh agent for both: 4.1's plm_rsh_agent, PRRTE's plm_ssh_agent.
if dpkg-query -W libopenmpi40 >/dev/null 2>&1; then
  pkgs=(openmpi-bin libopenmpi40 openmpi-common libpmix2t64)
else
  pkgs=(openmpi-bin libopenmpi3 openmpi-common libpmix2)
fi

key=$( (cat "$here/ring.c" "$here/pingpong.c" "$here/rsh-nc" "$here/rsh-serve" "$0" "$root/scripts/make-test-image";
        dpkg-query -W "${pkgs[@]}") | sha256sum | cut -d' ' -f1)
if [ -f "$out" ] && [ "$(cat "$out.key" 2>/dev/null)" = "$key" ]; then
  echo "$out (cached)"
  exit 0
fi
mkdir -p "$(dirname "$out")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs/usr/local/bin"

mpicc.openmpi -O2 -o "$rootfs/usr/local/bin/ring" "$here/ring.c"
mpicc.openmpi -O2 -o "$rootfs/usr/local/bin/pingpong" "$here/pingpong.c"
install -m 0755 "$here/rsh-nc" "$here/rsh-serve" "$rootfs/usr/local/bin/"

# Debian's merged /usr: /lib and /lib64 are links into /usr, in the image as here.
mkdir -p "$rootfs/usr/lib" "$rootfs/usr/lib64"
ln -s usr/lib "$rootfs/lib"
ln -s usr/lib64 "$rootfs/lib64"

# Copies a path into the image at its real directory, and what it links to (links kept as links).
put() {
  local dir name real
  dir=$(readlink -f "$(dirname "$1")"); name=$(basename "$1")
  [ -e "$dir/$name" ] || [ -L "$dir/$name" ] || return 0
  mkdir -p "$rootfs$dir"
  cp -a "$dir/$name" "$rootfs$dir/"
  real=$(readlink -f "$dir/$name")
  if [ "$real" != "$dir/$name" ] && [ -f "$real" ] && [ ! -e "$rootfs$real" ]; then put "$real"; fi
}

# The packages' own files (binaries, plugins, help texts, configuration).
dpkg -L "${pkgs[@]}" | grep -vE '^/usr/share/(doc|man|lintian)' | while read -r f; do
  if [ -f "$f" ] || [ -L "$f" ]; then put "$f"; fi
done

# Every shared library any of those ELF files loads, and the loader.
is_elf() { [ "$(head -c 4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; }
find "$rootfs" -type f | while read -r f; do if is_elf "$f"; then ldd "$f" 2>/dev/null || true; fi; done |
  grep -oE '/[^ ]+' | sort -u | while read -r lib; do put "$lib"; done
put /lib64/ld-linux-x86-64.so.2

EXTRA_ROOTFS=$rootfs \
IMAGE_ENV="OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_plm_rsh_agent=/usr/local/bin/rsh-nc PRTE_ALLOW_RUN_AS_ROOT=1 PRTE_ALLOW_RUN_AS_ROOT_CONFIRM=1 PRTE_MCA_plm_ssh_agent=/usr/local/bin/rsh-nc" \
  "$root/scripts/make-test-image" "$out" "$tag" >/dev/null
echo "$key" > "$out.key"
chmod 0644 "$out" "$out.key"
echo "$out"
