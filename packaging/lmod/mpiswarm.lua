-- An example Lmod module for mpiswarm with a site's defaults. Copy it into the module tree as
-- mpiswarm/0.1.0.lua, set `prefix` to where mpiswarm is installed and the defaults to the
-- site's. Every flag of `mpiswarm up`, `doctor` and `cleanup` can be given a default this way:
-- MPISWARM_ and the flag's name in upper snake case (--state-dir: MPISWARM_STATE_DIR); a flag
-- on the command line wins.

help([[
mpiswarm: a rootless Docker Swarm across the nodes of an MPI job.

  mpirun mpiswarm up -- docker service ls

Load the MPI module mpiswarm was built with first: it must be launched by that MPI.
Run `mpirun mpiswarm doctor` to check every node's prerequisites.
]])

whatis("Name: mpiswarm")
whatis("Version: 0.1.0")
whatis("Description: a rootless Docker Swarm across the nodes of an MPI job")

-- The MPI the binary was built against: another launcher would start N worlds of one rank.
prereq("openmpi")

local prefix = "/opt/mpiswarm/0.1.0"
prepend_path("PATH", pathJoin(prefix, "bin"))
prepend_path("MANPATH", pathJoin(prefix, "share/man"))

-- Site defaults.
-- Per-run state (daemon data, sockets) on a node-local disk: not NFS or Lustre.
setenv("MPISWARM_STATE_DIR", "/local/scratch")
-- The nodes' addresses on the fast network.
setenv("MPISWARM_IFACE", "ib0")
-- Overlay subnets that collide with none of the site's networks.
setenv("MPISWARM_ADDRESS_POOL", "10.128.0.0/12")
-- Bring-up deadline for large jobs.
setenv("MPISWARM_TIMEOUT", "300s")
