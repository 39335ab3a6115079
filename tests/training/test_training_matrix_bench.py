"""bench/training_matrix.py on a micro cell, so the benchmark cannot rot; Flower is optional and skipped if absent."""

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from fleetgrid.workloads.training.config import DiLoCoConfig, FedBuffConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import training_matrix as tm  # noqa: E402

HAS_FLOWER = importlib.util.find_spec("flwr") is not None


def test_shipped_config_changes_only_the_budget():
    budget = tm.Budget(rounds=3, local_steps=7)
    _, config, versions = tm.shipped_config("diloco_int4", budget, cars=8, seed=5)
    default = DiLoCoConfig()
    assert versions == 3
    assert config.local.steps == 7 and config.local.compression.bits == 4 and config.downlink.bits == 4
    assert config.rounds.cohort_size <= 8 and config.seed == 5
    untouched = dataclasses.replace(
        config, local=default.local, downlink=default.downlink, rounds=default.rounds, seed=default.seed
    )
    assert untouched == default  # outer lr, momentum, schedules: all as shipped
    assert dataclasses.replace(config.local, steps=default.local.steps, compression=default.local.compression) == (
        default.local
    )
    _, fedbuff, fedbuff_versions = tm.shipped_config("fedbuff", budget, cars=64, seed=0)
    assert fedbuff_versions * fedbuff.buffer_size >= 3 * fedbuff.rounds.clients_per_round
    assert fedbuff.buffer_size == FedBuffConfig().buffer_size
    _, plain, _ = tm.shipped_config("diloco_int4_nola", budget, cars=8, seed=5)
    assert default.local.logit_adjustment == 1.0 and plain.local.logit_adjustment == 0
    assert dataclasses.replace(plain, local=dataclasses.replace(plain.local, logit_adjustment=1.0)) == config
    _, fedbuff_lr1, _ = tm.shipped_config("fedbuff_lr1", budget, cars=64, seed=0)
    assert fedbuff.server_lr == 0.5 and dataclasses.replace(fedbuff_lr1, server_lr=0.5) == fedbuff
    for label in ("fedbuff", "fedadam"):
        _, shipped, _ = tm.shipped_config(label, budget, cars=8, seed=5)
        _, off, _ = tm.shipped_config(f"{label}_nola", budget, cars=8, seed=5)
        assert shipped.local.logit_adjustment == 1.0 and off.local.logit_adjustment == 0
        assert dataclasses.replace(off, local=dataclasses.replace(off.local, logit_adjustment=1.0)) == shipped


def test_micro_cell_reports_every_figure(capsys):
    budget = tm.Budget(rounds=2, local_steps=4, num_samples=1000, ceiling_factor=1.5)
    peers = ["diloco_int4", "fedavg_fp32", "fedbuff", "flower_fedavg"]
    tm._flower.cache_clear()  # says once per process that Flower is missing
    rows, runs = tm.run_matrix([tm.Cell("mnist1d", 0.3, 4, True)], [0], {"mnist1d": budget}, peers, progress=False)
    by_peer = {r["peer"]: r for r in rows}
    if not HAS_FLOWER:
        assert "Flower columns skipped" in capsys.readouterr().err
        assert "flower_fedavg" not in by_peer
    assert {"diloco_int4", "fedavg_fp32", "fedbuff", "centralized", "ceiling", "sync_dp"} <= set(by_peer)
    for label in ("diloco_int4", "fedavg_fp32", "fedbuff"):
        row = by_peer[label]
        assert 0 <= row["accuracy"]["min"] <= row["accuracy"]["max"] <= 1
        assert row["bytes_up"]["min"] > 0 and row["bytes_down"]["min"] > 0
        # a car holds no model before its first work: that first download is counted, a whole model
        assert 0 < row["initial_download_bytes"]["mean"] < row["bytes_down"]["mean"]
        assert row["vs_centralized"]["mean"] > 0 and "points_vs_ceiling" in row and "points_vs_sync_dp" in row
        assert row["reduction_vs_sync_dp"]["mean"] > 0
        assert set(row["targets"]) >= {"within_1.5_points", "500x_vs_sync_dp"}
        assert ("bytes_vs_flower" in row) == HAS_FLOWER
    assert by_peer["ceiling"]["steps"]["mean"] > by_peer["centralized"]["steps"]["mean"]
    # synchronous data-parallel: the same wall clock (rounds x H steps) over the whole cohort, and its bytes
    sync = by_peer["sync_dp"]
    assert sync["reduction_vs_sync_dp"]["mean"] == 1.0
    assert sync["bytes_up"]["mean"] == sync["bytes_down"]["mean"] > by_peer["diloco_int4"]["bytes_up"]["mean"]
    assert len(runs) == len(rows)  # one seed: one run per row


def test_cli_json_and_figure_on_a_tiny_char_lm(tmp_path, capsys):
    png = tmp_path / "m.png"
    argv = ["--tasks", "charlm", "--cars", "4", "--churn", "off", "--seeds", "0", "--strategies", "diloco_int8",
            "--rounds", "1", "--local-steps", "2", "--max-files", "20", "--ceiling-factor", "1", "--json",
            "--no-progress", "--png", str(png)]
    assert tm.main(argv) == 0
    printed = capsys.readouterr().out
    out = json.loads(printed.strip().splitlines()[-1])
    assert out["benchmark"] == "training_matrix"
    row = next(r for r in out["rows"] if r["peer"] == "diloco_int8")
    assert row["alpha"] is None and row["quality"]["mean"] > 1  # perplexity
    assert "perplexity_within_15%" in row["targets"]
    assert png.stat().st_size > 0

    # a matrix run in pieces is shown together from the saved outputs, without training anything
    saved = tmp_path / "piece.out"
    saved.write_text(printed)
    again = tmp_path / "again.png"
    assert tm.main(["--from-json", str(saved), "--markdown", "diloco_int8", "--png", str(again)]) == 0
    shown = capsys.readouterr().out
    assert "charlm a=- cars=4 churn=off (1 seed(s))" in shown
    table = [line for line in shown.splitlines() if line.startswith("|")]
    assert table[0].startswith("| cell (seeds) | diloco_int8 | loss |") and "| centralized |" in table[0]
    assert table[2].startswith("| charlm a=- cars=4 churn=off (1) |") and len(table) == 3
    assert again.stat().st_size > 0
    (tmp_path / "bad.out").write_text("not json")
    assert tm.main(["--from-json", str(tmp_path / "bad.out")]) == 2

    # pieces split by seed pool into one row per peer over both seeds; a later file's run of a seed replaces one
    seed_at = argv.index("--seeds") + 1
    assert tm.main([*argv[:seed_at], "1", *argv[seed_at + 1:-2]]) == 0
    other = tmp_path / "seed1.out"
    other.write_text(capsys.readouterr().out)
    assert tm.main(["--from-json", str(saved), str(other), str(saved), "--json"]) == 0
    shown = capsys.readouterr().out
    assert "charlm a=- cars=4 churn=off (2 seed(s))" in shown
    pooled = json.loads(shown.strip().splitlines()[-1])
    assert sorted((r["seed"], r["label"]) for r in pooled["runs"]) == sorted(
        (s, label) for s in (0, 1) for label in ("diloco_int8", *tm.REFERENCES))
    row = next(r for r in pooled["rows"] if r["peer"] == "diloco_int8")
    qualities = [next(r["quality"] for r in runs if r["label"] == "diloco_int8")
                 for runs in (out["runs"], json.loads(other.read_text().strip().splitlines()[-1])["runs"])]
    assert row["seeds"] == 2 and row["quality"]["min"] == min(qualities) and row["quality"]["max"] == max(qualities)
    other_budget = json.loads(printed.strip().splitlines()[-1])
    other_budget["budgets"]["charlm"]["rounds"] = 2
    (tmp_path / "other_budget.out").write_text(json.dumps(other_budget))
    assert tm.main(["--from-json", str(saved), str(tmp_path / "other_budget.out")]) == 2
    assert "differs from an earlier file's" in capsys.readouterr().err

    # a rerun after a fleetgrid change takes the references from the saved output where cell, seed, budget match
    assert tm.main(["--reuse", str(saved), *argv[:-2]]) == 0
    rerun = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"]
    before = {r["label"]: r for r in out["runs"]}
    for r in rerun:
        if r["label"] in tm.REFERENCES:
            assert r == before[r["label"]] | {"reused_from": str(saved)}
        else:
            assert "reused_from" not in r
    longer = [("2" if a == "1" and argv[i - 1] == "--ceiling-factor" else a) for i, a in enumerate(argv[:-2])]
    assert tm.main(["--reuse", str(saved), *longer]) == 0  # another ceiling: that one runs again, not the rest
    rerun = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"]
    assert {r["label"] for r in rerun if "reused_from" in r} == set(tm.REFERENCES) - {"ceiling"}
    assert tm.main(["--reuse", str(tmp_path / "bad.out"), *argv[:-2]]) == 2


def test_cell_selection_rejects_unknown_names():
    with pytest.raises(SystemExit):
        tm.main(["--strategies", "fedsgd"])
    assert [c.alpha for c in tm.cells(["mnist1d", "charlm"], [0.1, 1.0], [8], [True])] == [0.1, 1.0, None]


def test_each_cars_first_download_is_counted_as_the_whole_model_it_trains_from():
    from training_runs import TASKS, fleet_run

    from fleetgrid.workloads.training.compression import CompressionConfig, encoded_nbytes
    from fleetgrid.workloads.training.simulate import SimulationConfig

    budget = tm.Budget(rounds=2, local_steps=4, num_samples=1000)
    cell = tm.Cell("mnist1d", 0.3, 4, True)
    runs = {}
    for label in ("diloco_int4_fp32snap", "diloco_int4"):
        strategy, config, versions = tm.shipped_config(label, budget, cell.cars, 0)
        runs[label] = fleet_run(TASKS["mnist1d"], label, strategy, config, cell.spec(budget, 0),
                                SimulationConfig(preempt_prob=0.5), versions, seed=0, eval_windows=64,
                                evaluate_every_version=False)
    plain, snap = runs["diloco_int4_fp32snap"], runs["diloco_int4"]
    numel = plain["params"]
    assert plain["initial_download_bytes"] == plain["cars_took_part"] * encoded_nbytes(numel, CompressionConfig())
    compact = encoded_nbytes(numel, CompressionConfig(bits=8, chunk_size=256))
    assert snap["initial_download_bytes"] == snap["cars_took_part"] * compact
    assert snap["bytes_down"] < plain["bytes_down"] and snap["full_downloads"] == 0
    assert plain["full_downloads"] >= plain["cars_took_part"] and snap["compact_downloads"] >= snap["cars_took_part"]
