"""Federated training on the fleet: each car trains on data that never leaves it; only compressed deltas travel.

The public facade. Strategies (FedAvg, FedAdam, DiLoCo, FedBuff) own the global model and never see a transport; the
coordinator drives them through the :class:`Fleet` protocol (``simulate.SimulatedFleet`` does so in process),
and a car runs :func:`train_locally` on the shard it builds from a :class:`DataSpec`.
"""

from fleetgrid.workloads.training.compression import (
    CompressionConfig,
    ErrorFeedback,
    decode,
    encode,
    encoded_nbytes,
)
from fleetgrid.workloads.training.config import (
    DiLoCoConfig,
    FedAdamConfig,
    FedAvgConfig,
    FedBuffConfig,
    LocalTrainingConfig,
    PrivacyConfig,
    RobustConfig,
    RoundConfig,
    StrategyConfig,
    config_from_dict,
    to_dict,
)
from fleetgrid.workloads.training.flat import FlatLayout
from fleetgrid.workloads.training.local import (
    ArrayDataset,
    LocalDataset,
    LocalResult,
    evaluate_model,
    heldout_prior,
    make_evaluator,
    train_locally,
)
from fleetgrid.workloads.training.messages import (
    ClientUpdate,
    ModelDownload,
    TrainInstructions,
    apply_download,
    params_digest,
)
from fleetgrid.workloads.training.simulate import SimulatedFleet, SimulationConfig
from fleetgrid.workloads.training.strategies import (
    STRATEGIES,
    AcceptedUpdate,
    DiLoCo,
    FedAdam,
    FedAvg,
    FedBuff,
    Fleet,
    Strategy,
    make_strategy,
    strategy_from_state_bytes,
)
from fleetgrid.workloads.training.tasks import (
    DataSpec,
    build_eval_set,
    build_local_dataset,
    build_model,
)

__all__ = [
    "STRATEGIES",
    "AcceptedUpdate",
    "ArrayDataset",
    "ClientUpdate",
    "CompressionConfig",
    "DataSpec",
    "DiLoCo",
    "DiLoCoConfig",
    "ErrorFeedback",
    "FedAdam",
    "FedAdamConfig",
    "FedAvg",
    "FedAvgConfig",
    "FedBuff",
    "FedBuffConfig",
    "FlatLayout",
    "Fleet",
    "LocalDataset",
    "LocalResult",
    "LocalTrainingConfig",
    "PrivacyConfig",
    "ModelDownload",
    "RobustConfig",
    "RoundConfig",
    "SimulatedFleet",
    "SimulationConfig",
    "Strategy",
    "StrategyConfig",
    "TrainInstructions",
    "apply_download",
    "build_eval_set",
    "build_local_dataset",
    "build_model",
    "config_from_dict",
    "decode",
    "encode",
    "encoded_nbytes",
    "evaluate_model",
    "heldout_prior",
    "make_evaluator",
    "make_strategy",
    "params_digest",
    "strategy_from_state_bytes",
    "to_dict",
    "train_locally",
]
