import numpy as np
import torch

from fleetgrid.workloads.training.compression import CompressionConfig, ErrorFeedback, decode
from fleetgrid.workloads.training.config import LocalTrainingConfig
from fleetgrid.workloads.training.flat import FlatLayout
from fleetgrid.workloads.training.local import ArrayDataset, train_locally
from fleetgrid.workloads.training.messages import TrainInstructions


def setup(steps=10, bits=8):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(64, 4)
    ds = ArrayDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())
    ins = TrainInstructions(
        round=3,
        base_version=2,
        model_digest="d",
        seed=7,
        local=LocalTrainingConfig(
            optimizer="adamw", lr=1e-2, steps=steps, batch_size=8, compression=CompressionConfig(bits=bits)
        ),
    )
    return model, FlatLayout.of(model).flatten(model), ds, ins


def test_full_run_reports_counts_and_a_decodable_delta():
    model, g, ds, ins = setup()
    r = train_locally(model, g, ds, ins, client_id="car-1")
    u = r.update
    assert (r.steps_done, r.examples_seen, r.preempted) == (10, 80, False)
    assert (u.round, u.base_version, u.num_examples, u.steps_planned) == (3, 2, 64, 10)
    delta = decode(u.payload)
    assert delta.shape == g.shape and r.bytes_up == len(u.payload)
    local = FlatLayout.of(model).flatten(model)
    assert np.abs(delta - (g - local).numpy()).max() <= np.abs((g - local).numpy()).max() / 254 + 1e-6


def test_max_passes_caps_the_steps_of_a_small_shard_only():
    import dataclasses

    import pytest

    from fleetgrid.errors import InvalidInput

    model, g, ds, ins = setup()  # H 10, batch 8, 64 examples
    for passes, planned in ((0.5, 4), (1.0, 8), (100.0, 10)):
        capped = dataclasses.replace(ins, local=dataclasses.replace(ins.local, max_passes=passes))
        r = train_locally(model, g, ds, capped, client_id="car-1")
        assert (r.steps_done, r.update.steps_planned, r.examples_seen) == (planned, planned, 8 * planned)
    assert LocalTrainingConfig(steps=10, batch_size=8, max_passes=0.01).planned_steps(1) == 1  # never 0
    with pytest.raises(InvalidInput, match="max_passes must be a finite number > 0"):
        LocalTrainingConfig(max_passes=0)


def test_preemption_after_any_step_reports_partial_work():
    model, g, ds, ins = setup()
    r = train_locally(model, g, ds, ins, client_id="car-1", should_stop=lambda steps: steps >= 3)
    assert (r.steps_done, r.examples_seen, r.preempted, r.update.steps_done) == (3, 24, True, 3)
    r0 = train_locally(model, g, ds, ins, client_id="car-1", should_stop=lambda steps: True)
    assert r0.update is None and r0.preempted and r0.steps_done == 0


def test_same_lease_is_reproducible_and_error_feedback_is_carried():
    model, g, ds, ins = setup(bits=4)
    a = train_locally(model, g, ds, ins, client_id="c").update.payload
    assert train_locally(model, g, ds, ins, client_id="c").update.payload == a
    ef = ErrorFeedback(g.numel())
    train_locally(model, g, ds, ins, client_id="c", error_feedback=ef)
    assert np.abs(ef.residual).sum() > 0


def test_fedprox_term_keeps_the_car_near_the_global():
    import dataclasses

    import pytest

    from fleetgrid.errors import InvalidInput

    def drift(mu):
        model, g, ds, ins = setup(steps=20, bits=None)
        ins = dataclasses.replace(ins, local=dataclasses.replace(ins.local, prox_mu=mu))
        r = train_locally(model, g, ds, ins, client_id="c")
        return float(np.linalg.norm(decode(r.update.payload))), r.train_loss

    free, _ = drift(0.0)
    held, loss = drift(100.0)
    assert held < 0.5 * free and np.isfinite(loss)
    with pytest.raises(InvalidInput, match="prox_mu"):
        LocalTrainingConfig(prox_mu=-1.0)
