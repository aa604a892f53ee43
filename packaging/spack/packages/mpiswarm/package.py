# mpiswarm's Spack recipe: add this repository with `spack repo add packaging/spack`.

import spack.build_systems.cargo
from spack.package import *


class Mpiswarm(CargoPackage):
    """A rootless Docker Swarm across the nodes of an MPI job: started by the job's MPI
    launcher on every node, it brings up one rootless Docker daemon per node, joins them into
    one Swarm, runs a command or a stack, and tears every node down.

    The binary is linked against the spec's MPI and must be launched by that MPI's launcher.
    There is no public release to fetch yet: build from a checkout with
    `spack dev-build -d CHECKOUT mpiswarm@=0.1.0`, or `spack develop` in an environment.
    """

    version("0.1.0")

    # let chains (edition 2024) are stable from Rust 1.88.
    depends_on("rust@1.88:", type="build")
    depends_on("mpi")
    # The mpi crate's bindings are made by bindgen, which loads libclang.
    depends_on("llvm+clang", type="build")

    # At run time, on every node: rootless Docker and its helpers. Sites install these with the
    # system's packages (packaging/README.md); mpiswarm doctor checks them.

    def setup_build_environment(self, env):
        # The mpi crate's build script finds the MPI through $MPICC (`mpicc -show`).
        env.set("MPICC", self.spec["mpi"].mpicc)
        # bindgen loads libclang from LIBCLANG_PATH, else from where clang-sys looks (the
        # system's directories): an external llvm may keep it elsewhere than its prefix's lib.
        llvm = self.spec["llvm"].prefix
        for lib_dir in (llvm.lib, llvm.lib64):
            if find_libraries("libclang", root=lib_dir, recursive=False):
                env.set("LIBCLANG_PATH", lib_dir)
                break


class CargoBuilder(spack.build_systems.cargo.CargoBuilder):
    @property
    def build_args(self):
        # Exactly the dependency versions the project tested.
        return ["--locked"]
