"""``python -m pipeline cluster <command>``: the pipeline's DVC stages as Slurm jobs, or as local processes.

Registered by :mod:`pipeline.cli` as the ``cluster`` group. Each command is a shell over
:mod:`pipeline.cluster.driver` (``repro``), :mod:`pipeline.cluster.sweep` (``exp``) and :mod:`pipeline.cluster.job`
(``job``, what a submitted job runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.common.errors import user_errors

if TYPE_CHECKING:
    from pipeline.cluster.driver import Executor
    from pipeline.cluster.slurm import Resources

app = typer.Typer(
    add_completion=False, no_args_is_help=True,
    help="Run out-of-date DVC stages as Slurm jobs (--slurm) or local processes (--local -j N), one job per stage.",
)
SlurmOpt = Annotated[bool, typer.Option("--slurm/--local", help="submit the steps with sbatch, or run them here")]
JobsOpt = Annotated[int, typer.Option("--jobs", "-j", help="with --local: steps at once (0 = one per core)", min=0)]
PartitionOpt = Annotated[str | None, typer.Option(help="Slurm partition (default: the cluster's)")]
GpusOpt = Annotated[int, typer.Option("--gpus-per-job", help="GPUs per backbone/extract/train/predict job", min=0)]
CpusOpt = Annotated[int | None, typer.Option("--cpus-per-job", help="CPUs per job (sbatch --cpus-per-task)", min=1)]
MemOpt = Annotated[str | None, typer.Option(help="memory per job, e.g. 16G (sbatch --mem)")]
TimeOpt = Annotated[str | None, typer.Option(help="time limit per job, e.g. 4:00:00 (sbatch --time)")]
SbatchOpt = Annotated[list[str] | None, typer.Option("--sbatch", help="further sbatch option: --sbatch=--account=x")]
ShardsOpt = Annotated[int, typer.Option("--extract-shards", help="jobs per feature extraction (--shard i/n)", min=1)]
PollOpt = Annotated[float, typer.Option(help="seconds between looks at the jobs' states", min=0.1)]


def _executor(slurm: bool, jobs: int) -> Executor:
    from pipeline.cluster.local import LocalExecutor
    from pipeline.cluster.slurm import SlurmExecutor

    return SlurmExecutor() if slurm else LocalExecutor(jobs)


def _resources(partition: str | None, gpus: int, cpus: int | None, mem: str | None, time: str | None,
               sbatch: list[str] | None) -> Resources:
    from pipeline.cluster.slurm import Resources

    return Resources(partition=partition, gpus=gpus, cpus=cpus, mem=mem, time=time, extra=tuple(sbatch or ()))


def _root() -> Path:
    """The DVC repository around the working directory."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    from pipeline.cluster import ClusterError

    try:
        return Path(Repo.find_root())
    except NotDvcRepoError as e:
        raise ClusterError(str(e)) from None


@app.command()
@user_errors
def repro(
    targets: Annotated[list[str] | None, typer.Argument(help="stages or foreach groups (default: all)")] = None,
    slurm: SlurmOpt = False,
    jobs: JobsOpt = 1,
    partition: PartitionOpt = None,
    gpus_per_job: GpusOpt = 0,
    cpus_per_job: CpusOpt = None,
    mem: MemOpt = None,
    time: TimeOpt = None,
    sbatch: SbatchOpt = None,
    extract_shards: ShardsOpt = 1,
    dry: Annotated[bool, typer.Option("--dry", help="print the steps, submit nothing")] = False,
    poll: PollOpt = 2.0,
) -> None:
    """Like `dvc repro`, one job per out-of-date stage: independent stages side by side, each job after the jobs
    it reads from (Slurm: --dependency=afterok), each recording its stage with `dvc commit` when it succeeded."""
    from pipeline.cluster import driver

    res = _resources(partition, gpus_per_job, cpus_per_job, mem, time, sbatch)
    driver.repro(_root(), targets or [], _executor(slurm, jobs), res, shards=extract_shards, dry=dry, poll_s=poll)


@app.command()
@user_errors
def exp(
    set_param: Annotated[
        list[str] | None, typer.Option("--set-param", "-S", help="as `dvc exp run -S`; a,b,c sweeps the values")
    ] = None,
    ablation: Annotated[bool, typer.Option("--ablation", help="the paper's 8 ablation rows (see `ablation`)")] = False,
    name: Annotated[str | None, typer.Option("--name", "-n", help="name experiments <name>-1, <name>-2 ...")] = None,
    slurm: SlurmOpt = False,
    jobs: JobsOpt = 1,
    partition: PartitionOpt = None,
    gpus_per_job: GpusOpt = 0,
    cpus_per_job: CpusOpt = None,
    mem: MemOpt = None,
    time: TimeOpt = None,
    sbatch: SbatchOpt = None,
    extract_shards: ShardsOpt = 1,
    poll: PollOpt = 2.0,
) -> None:
    """Run a sweep (every combination of the -S values, or --ablation) as jobs, each experiment in its own
    workspace; each one that succeeds is saved as a DVC experiment (`dvc exp show`)."""
    from pipeline.cluster import ClusterError, sweep

    if ablation == bool(set_param):
        raise ClusterError("give -S key=value[,value...] (repeatable) or --ablation, not both")
    experiments = sweep.ablation_grid() if ablation else sweep.grid(set_param or [], name)
    res = _resources(partition, gpus_per_job, cpus_per_job, mem, time, sbatch)
    sweep.run(_root(), experiments, _executor(slurm, jobs), res, shards=extract_shards, poll_s=poll)


@app.command(hidden=True)
def job(
    step: Annotated[str, typer.Argument(help="step of the plan")],
    run: Annotated[Path, typer.Option(help="the run's folder (its plan.json)")],
) -> None:
    """What a submitted job runs: the step's stage command, then `dvc commit` of the stage when it succeeded."""
    from pipeline.cluster import job as runner

    raise typer.Exit(runner.main(run, step))
