"""Real batch engines that tests and the benchmark start and stop for themselves.

``tools/engines.sh`` installs Slurm (``make test`` runs it; Ray comes with the
``ray`` extra); each module here runs one engine's daemons as child processes
in a temporary directory of its own, on loopback ports, with no state left
behind:

- :mod:`tools.testclusters.slurm`: ``SlurmCluster``, a single-node Slurm
  cluster (slurmctld, slurmd and a private munged).
- :mod:`tools.testclusters.ray`: ``RayHead``, a Ray head serving the Jobs API.
"""
