"""Real batch engines that tests and the benchmark start and stop for themselves.

``tools/engines.sh`` installs them (``make test`` runs it); each module here runs
one engine's daemons as child processes in a temporary directory of its own,
on loopback ports, with no state left behind:

- :mod:`tools.testclusters.slurm`: :class:`~tools.testclusters.slurm.SlurmCluster`,
  a single-node Slurm cluster (slurmctld, slurmd and a private munged).
"""
