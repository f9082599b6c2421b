"""Running the benchmark grid on a cluster engine: Ray, or Slurm through submitit.

The selected cases become a graph of stages (:mod:`.graph`): bases, experts, statistics, searches,
merges, evaluations and the cases that read them. An executor submits each stage as a task of the
engine with its resource request (:mod:`.resources`) and its upstream stages as dependencies, so
each artifact is built by one task and independent work runs at the same time. A stage task runs
the same :class:`~mergebench.pipeline.Pipeline` method a local run calls (:mod:`.stages`), against
the same content-addressed cache, which every node must share (:mod:`.probe` checks before any
work is scheduled). The pytest side is :mod:`mergebench.pytest_cluster`.

Nothing here imports ``ray`` or ``submitit`` until an executor is started.
"""
