"""What a training job publishes per version, as its grants list it, its checkpoint keeps it and pruning drops
it: the compact snapshot alongside the float32 one and the deltas."""

from types import SimpleNamespace

from fleetgrid.coordinator.train_artifacts import TrainingArtifacts, job_owner
from fleetgrid.protocol import TrainGrant

H = lambda c: c * 64  # noqa: E731 - a digest made of one repeated hex digit


def run_with(compacts: bool) -> SimpleNamespace:
    return SimpleNamespace(
        job=SimpleNamespace(job_id="j"),
        snapshots={1: (H("a"), 100), 2: (H("b"), 100)},
        deltas={1: (H("1"), 20), 2: (H("2"), 20)},
        compacts={1: (H("c"), 30, H("e")), 2: (H("d"), 30, H("f"))} if compacts else {},
    )


def grant(files: dict) -> TrainGrant:
    return TrainGrant(lease_id="l", job_id="j", round=1, base_version=2, model_digest=H("9"),
                      snapshot=files["snapshot"], deltas=files["deltas"], compact=files.get("compact"), model="m",
                      local={}, seed=0, data={}, shard=0, deadline=0.0, renew_every_s=1.0)


def test_a_grant_lists_the_compact_snapshot_only_when_one_was_published():
    files = TrainingArtifacts.grant_files(run_with(True), 2, keep=16)
    assert files["compact"] == {"digest": H("d"), "size": 30, "params_digest": H("f")}
    g = grant(files)
    assert g.compact is not None and g.compact.params_digest == H("f") and [d.version for d in g.deltas] == [1, 2]
    old = TrainingArtifacts.grant_files(run_with(False), 2, keep=16)
    assert "compact" not in old and grant(old).compact is None  # the grant of a job without it, as before


def test_compact_snapshots_are_checkpointed_and_pruned_with_their_versions():
    run = run_with(True)
    meta = TrainingArtifacts.to_meta(run)
    resumed = SimpleNamespace(job=run.job)
    TrainingArtifacts.from_meta(resumed, {"files": meta})
    assert resumed.compacts == run.compacts and resumed.snapshots == run.snapshots
    assert "compacts" not in TrainingArtifacts.to_meta(run_with(False))  # same checkpoint as before when off
    TrainingArtifacts.from_meta(resumed, {"files": TrainingArtifacts.to_meta(run_with(False))})
    assert resumed.compacts == {}
    holds = TrainingArtifacts.prune(run, 2, staleness=0, keep=16)
    assert run.compacts == {2: (H("d"), 30, H("f"))} and run.snapshots == {2: (H("b"), 100)}
    assert holds == [(job_owner("j"), H("a")), (job_owner("j"), H("c"))]
