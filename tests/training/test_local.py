import numpy as np
import pytest
import torch

from fleetgrid.errors import InvalidInput
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


def test_logit_adjustment_keeps_a_skewed_car_from_erasing_the_labels_it_never_sees():
    """A car holding two labels of ten: plain cross-entropy drives the other eight labels' probability towards 0
    (averaged into the global, that model under-predicts them); the logit-adjusted loss, shifted by the car's own
    label prior, leaves them several times more. Held-out evaluation sees plain logits."""
    import dataclasses

    import torch.nn.functional as F

    from fleetgrid.workloads.training.local import adjusted_loss, cross_entropy_loss

    torch.manual_seed(0)
    x = torch.randn(256, 6)
    ds = ArrayDataset(x, (x[:, 0] > 0).long())  # labels 0 and 1 only
    counts = ds.target_counts(10)
    assert counts[2:].tolist() == [0.0] * 8 and counts[:2].sum() == 256
    logits, y = torch.randn(5, 10), torch.tensor([0, 1, 1, 0, 1])
    shift = torch.log((counts + 0.5) / (counts + 0.5).sum())
    assert torch.allclose(adjusted_loss(cross_entropy_loss, ds, 0.5)(logits, y), F.cross_entropy(logits + shift / 2, y))
    absent = {}
    for tau in (0.0, 1.0):
        torch.manual_seed(1)
        model = torch.nn.Linear(6, 10)
        ins = TrainInstructions(round=1, base_version=0, model_digest="d", seed=3, local=LocalTrainingConfig(
            optimizer="adamw", lr=1e-2, steps=300, batch_size=32, logit_adjustment=tau))
        train_locally(model, FlatLayout.of(model).flatten(model), ds, ins, client_id="car-1")
        with torch.no_grad():
            probs = torch.softmax(model(x), 1)
        assert (probs.argmax(1) == ds.y).float().mean() > 0.95  # the labels it holds are learnt either way
        absent[tau] = float(probs[:, 2:].sum(1).mean())
    assert absent[1.0] > 3 * absent[0.0]
    for bad in (-1.0, float("inf"), float("nan"), "1"):
        with pytest.raises(InvalidInput, match="logit_adjustment must be a finite number >= 0"):
            dataclasses.replace(LocalTrainingConfig(), logit_adjustment=bad)


def test_the_char_lm_prior_counts_next_char_targets():
    from fleetgrid.data.text import VOCAB, TokenWindows

    windows = TokenWindows(VOCAB.encode("abcab"), block_size=2)
    counts = windows.target_counts(len(VOCAB))
    a, b, c = VOCAB.encode("abc")
    assert counts.sum() == 4 and (counts[a], counts[b], counts[c]) == (1, 2, 1)  # "bcab": every token but the first
    with pytest.raises(InvalidInput, match="cannot predict this shard"):
        windows.target_counts(3)


def test_a_car_whose_labels_match_the_logit_target_trains_as_without_the_adjustment():
    """The shift is tau * (log prior - log target): a car holding the target's shares has nothing to correct
    (a language model's cars are near that: the held-out text's next-char shares are theirs)."""
    import dataclasses

    model, g, ds, ins = setup()
    counts = ds.target_counts(3) + 0.5
    own = tuple((counts / counts.sum()).tolist())
    plain = train_locally(model, g, ds, ins, client_id="car-1")
    for target, same in ((own, True), (None, False), ((0.2, 0.3, 0.5), False)):
        local = dataclasses.replace(ins.local, logit_adjustment=1.0, logit_target=target)
        adjusted = train_locally(model, g, ds, dataclasses.replace(ins, local=local), client_id="car-1")
        assert (adjusted.update.payload == plain.update.payload) is same, target
    wrong = dataclasses.replace(ins.local, logit_adjustment=1.0, logit_target=(0.5, 0.5))
    with pytest.raises(InvalidInput, match="logit_target has 2 class shares; the model has 3 outputs"):
        train_locally(model, g, ds, dataclasses.replace(ins, local=wrong), client_id="car-1")
    assert LocalTrainingConfig(logit_target=[0.25, 0.75]).logit_target == (0.25, 0.75)  # as JSON brings it
    for bad in ((1.0,), (0.5, 0.6), (0.0, 1.0), (float("nan"), 1.0), "ab", (True, False)):
        with pytest.raises(InvalidInput, match="logit_target must be a list of >= 2 class shares"):
            LocalTrainingConfig(logit_target=bad)
