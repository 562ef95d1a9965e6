"""The graph walk of `cluster repro` (pipeline/cluster/graph.py) on hand-made graphs: what runs, after what, in
which wave, and how an extraction is sharded."""

from __future__ import annotations

import pytest

from pipeline.cluster import ClusterError
from pipeline.cluster.graph import StageNode, checks, plan, shardable, stale, topological


def node(name: str, *upstream: str, changed: bool = False, cmd: str | None = None, persist: bool = False,
         always: bool = False) -> StageNode:
    return StageNode(name, (cmd or f"python -m pipeline {name.split('@')[0]}",), ".", upstream, changed, persist, always)


EXTRACT = "python -m pipeline extract {} --prepared data/prepared --out features/{}.zarr"

# the shape of this repository's dvc.yaml: scan always runs, prepare -> split, extract@*, train@*, evaluate
PIPELINE = [
    node("scan", always=True, changed=True),
    node("prepare", "scan"),
    node("split", "prepare"),
    *(node(f"extract@{m}", "prepare", cmd=EXTRACT.format(m, m), persist=True) for m in ("iresnet", "vggish")),
    *(node(f"train@{k}", "split", "extract@iresnet", "extract@vggish", persist=False) for k in (0, 1)),
    node("evaluate", "train@0", "train@1", "split"),
]


def test_up_to_date_graph_plans_nothing():
    assert plan([node("a"), node("b", "a")]) == []


def test_a_changed_stage_runs_with_everything_downstream_each_after_what_it_reads():
    nodes = [node("c", "b"), node("b", "a"), node("a"), node("x")]  # out of order on purpose
    steps = plan([n if n.name != "b" else node("b", "a", changed=True) for n in nodes])
    assert [(s.name, s.after) for s in steps] == [("b", ()), ("c", ("b",))]
    assert all(s.kind == "stage" and s.records for s in steps)


def test_independent_stages_wait_only_for_what_they_read():
    nodes = [node("prepare", changed=True), *(node(f"train@{k}", "prepare") for k in range(3)), node("eval", "train@0", "train@1", "train@2")]
    steps = {s.name: s.after for s in plan(nodes)}
    assert steps == {"prepare": (), "train@0": ("prepare",), "train@1": ("prepare",), "train@2": ("prepare",),
                     "eval": ("train@0", "train@1", "train@2")}


def test_the_stage_that_always_runs_goes_first_and_the_rest_is_planned_after_it():
    assert checks(PIPELINE) == {"scan"}
    assert [s.name for s in plan(PIPELINE, only=checks(PIPELINE))] == ["scan"]
    # after scan ran (settled), with nothing else out of date, nothing is left
    assert plan(PIPELINE, settled={"scan"}) == []
    # a fold whose stage is out of date runs, with evaluate after it; the other fold does not
    changed = [n if n.name != "train@1" else node("train@1", "split", "extract@iresnet", "extract@vggish", changed=True)
               for n in PIPELINE]
    assert [(s.name, s.after) for s in plan(changed, settled={"scan"})] == [("train@1", ()), ("evaluate", ("train@1",))]


def test_the_first_wave_holds_what_the_check_needs():
    nodes = [node("demo", changed=True), node("scan", "demo", always=True, changed=True), node("prepare", "scan"),
             node("backbone", "demo")]
    assert checks(nodes) == {"demo", "scan"}
    assert [(s.name, s.after) for s in plan(nodes, only=checks(nodes))] == [("demo", ()), ("scan", ("demo",))]


def test_extraction_shards_run_side_by_side_then_the_record_step():
    nodes = [node("prepare", changed=True), node("extract@mfcc", "prepare", cmd=EXTRACT.format("mfcc", "mfcc"), persist=True),
             node("train@0", "extract@mfcc")]
    steps = plan(nodes, shards=3)
    assert [(s.name, s.kind, s.after) for s in steps] == [
        ("prepare", "stage", ()),
        *((f"extract@mfcc.shard{i}of3", "shard", ("prepare",)) for i in range(3)),
        ("extract@mfcc", "record", ("extract@mfcc.shard0of3", "extract@mfcc.shard1of3", "extract@mfcc.shard2of3")),
        ("train@0", "stage", ("extract@mfcc",)),
    ]
    assert steps[2].cmds == (EXTRACT.format("mfcc", "mfcc") + " --shard 1/3",)
    assert steps[4].cmds == (EXTRACT.format("mfcc", "mfcc"),) and steps[4].records and not steps[1].records


def test_only_persistent_extractions_are_sharded():
    assert shardable(node("extract@a", cmd=EXTRACT.format("a", "a"), persist=True))
    assert not shardable(node("extract@a", cmd=EXTRACT.format("a", "a"), persist=False))  # a run would delete the others' work
    assert not shardable(node("train@0", persist=True))
    assert not shardable(node("extract@a", cmd=EXTRACT.format("a", "a") + " --shard 0/2", persist=True))


def test_a_cycle_is_an_error_that_names_its_stages():
    with pytest.raises(ClusterError, match=r"\['a', 'b'\].*cycle"):
        topological([node("a", "b"), node("b", "a")])


def test_stale_is_changed_plus_downstream():
    assert stale([node("a"), node("b", "a", changed=True), node("c", "b"), node("d", "a")]) == {"b", "c"}


def test_shards_below_one_are_refused():
    with pytest.raises(ClusterError, match="at least 1"):
        plan(PIPELINE, shards=0)
