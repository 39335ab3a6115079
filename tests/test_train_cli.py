"""``fleetgrid submit train``'s flags as the strategy settings they stand for, and how a secure job's versions read."""

from __future__ import annotations

import fleetgrid.cli  # noqa: F401 - registers the submit group train_cli joins (import order)
from fleetgrid.protocol import TrainingProgress
from fleetgrid.train_cli import _nested, privacy_pairs, secure_pairs
from fleetgrid.views import version_line
from fleetgrid.workloads.training import FedAvgConfig, config_from_dict


def test_secure_aggregation_alone_clips_every_car_to_a_fixed_norm():
    settings = _nested(secure_pairs(True, None, 3.0))
    assert settings == {"secure_aggregation": True, "robust": {"norm_bound": "fixed", "max_norm": 3.0}}
    config = config_from_dict(FedAvgConfig, settings)
    assert config.secure_aggregation and config.robust.max_norm == 3.0


def test_secure_aggregation_with_dp_clips_to_the_privacy_clip():
    pairs = privacy_pairs(mode="distributed", clip=1.0, noise=0.5, target_epsilon=None, delta=None, budget=None)
    settings = _nested(pairs + secure_pairs(True, "distributed", 3.0))
    assert settings["robust"] == {"norm_bound": "off"} and settings["secure_aggregation"] is True
    assert config_from_dict(FedAvgConfig, settings).privacy.clip == 1.0


def test_no_flag_no_setting():
    assert secure_pairs(False, None, 3.0) == []


def test_a_secure_version_line_names_its_dropouts():
    t = TrainingProgress(version=1, target_versions=3, round=1, strategy="fedavg", bytes_up=2048, bytes_down=4096,
                         reports=4, rejected=0, checkpoint=None, history=[], secure_aggregation=True)
    row = {"version": 1, "accuracy": 0.5, "loss": 1.2, "used": 4, "cars": 4, "secagg_asked": 5, "secagg_dropped": 1}
    assert "4 cars, 4 updates (secure: 1 of 5 dropped)" in version_line(row, t)
