"""Past one machine: the DVC graph of a pipeline run as Slurm jobs (or local processes), one job per stage.

- :mod:`~pipeline.cluster.graph` reads the stages of the targets from DVC (commands, dependencies, what is out of
  date) and plans the steps: one per stage, or ``--shard i/n`` steps plus a record step for an extraction.
- :mod:`~pipeline.cluster.job` is what a job runs: check the stage is still out of date, run its command, and record
  its outputs with ``dvc commit`` when (and only when) the command succeeded.
- :mod:`~pipeline.cluster.slurm` and :mod:`~pipeline.cluster.local` hand the same job scripts to ``sbatch``
  (``--dependency=afterok``) or to local processes (``-j N``); :mod:`~pipeline.cluster.driver` is the one walk that
  submits a plan to either and follows it; :mod:`~pipeline.cluster.sweep` runs experiments through it.
"""

from __future__ import annotations

from pipeline.common.errors import PipelineError


class ClusterError(PipelineError):
    """A failed job (with its log), a missing ``sbatch``, a DVC or git error: one line for the user."""
