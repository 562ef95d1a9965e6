"""Sweep names and overrides (pipeline/cluster/sweep.py); the sweeps themselves run in
tests/e2e/test_cluster_sweep.py and tests/e2e/test_cluster_slurm.py."""

from __future__ import annotations

import pytest

from pipeline.cluster import ClusterError
from pipeline.cluster.sweep import ablation_grid, grid


def test_a_sweep_is_every_combination_named_after_its_values():
    exps = grid(["train.lr=1e-3,2e-3", "model.tcn=true,false"])
    assert [e.name for e in exps] == ["lr0.001-tcnTrue", "lr0.001-tcnFalse", "lr0.002-tcnTrue", "lr0.002-tcnFalse"]
    assert exps[1].overrides == {"params.yaml": ["train.lr=0.001", "model.tcn=False"]}
    assert [e.name for e in grid(["train.seed=0,1"], name="seeds")] == ["seeds-1", "seeds-2"]  # as dvc exp run names them
    abl = ablation_grid()
    assert len(abl) == 8 and abl[0].name == "abl-lase0-tcn0-transformer0"
    assert abl[-1].overrides == {"params.yaml": ["model.lase=true", "model.tcn=true", "model.transformer=true"]}
    with pytest.raises(ClusterError, match=r"^-S train.lr=\[1,: ") as e:
        grid(["train.lr=[1,"])
    assert "\n" not in str(e.value)
