"""``fleetgrid submit train``: a federated training job, with its strategy settings, differential privacy and robust
aggregation given as flags. Registered by :mod:`fleetgrid.cli` under ``submit``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fleetgrid import cli as base
from fleetgrid import views
from fleetgrid.errors import FleetgridError, InvalidInput

__all__ = ["register"]


def _setting(text: str) -> tuple[list[str], Any]:
    """``local.steps=50`` -> (["local", "steps"], 50): the value is read as JSON, else kept as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise InvalidInput(
            f"--set {text!r}: expected KEY=VALUE, e.g. --set local.steps=50 or --set rounds.deadline_s=120"
        )
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.split("."), value


def _nested(pairs: list[tuple[list[str], Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in pairs:
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InvalidInput(f"--set {'.'.join(path)}: {part} was already given a value")
        node[path[-1]] = value
    return out


def privacy_pairs(*, mode: str | None, clip: float | None, noise: float | None, target_epsilon: float | None,
                  delta: float | None, budget: float | None) -> list[tuple[list[str], Any]]:
    """The strategy settings the ``--dp-*`` flags stand for. DP's clip bounds every update, so a DP job's robust
    norm bound is turned off unless ``--set robust.norm_bound=fixed`` asks for a (smaller) fixed one as well.
    Everything is validated by the coordinator's :class:`PrivacyConfig` (the one place that knows the rules)."""
    given = {"--dp-clip": clip, "--dp-noise": noise, "--dp-target-epsilon": target_epsilon, "--dp-delta": delta,
             "--dp-budget": budget}
    if mode is None:
        extra = sorted(flag for flag, value in given.items() if value is not None)
        if extra:
            verb = "needs" if len(extra) == 1 else "need"
            raise InvalidInput(f"{', '.join(extra)} {verb} --dp-mode central or distributed")
        return []
    pairs: list[tuple[list[str], Any]] = [(["privacy", "mode"], mode)]
    for key, value in (("clip", clip), ("noise_multiplier", noise), ("target_epsilon", target_epsilon),
                       ("delta", delta), ("epsilon_budget", budget)):
        if value is not None:
            pairs.append((["privacy", key], value))
    if mode != "none":
        pairs.append((["robust", "norm_bound"], "off"))
    return pairs


def secure_pairs(secure: bool, dp_mode: str | None, max_norm: float) -> list[tuple[list[str], Any]]:
    """The settings ``--secure-aggregation`` stands for. Each car must clip its own update to a norm the
    coordinator knows (it sees only the sum): DP's clip when DP is on, else a fixed norm bound of ``max_norm``."""
    if not secure:
        return []
    pairs: list[tuple[list[str], Any]] = [(["secure_aggregation"], True)]
    if dp_mode in (None, "none"):
        pairs += [(["robust", "norm_bound"], "fixed"), (["robust", "max_norm"], max_norm)]
    return pairs


def submit_train(
    model: Annotated[str, typer.Option(help="Trainable model: 'mnist1d-cnn' or 'charlm'")] = "mnist1d-cnn",
    strategy: Annotated[str, typer.Option(help="fedavg, fedadam, diloco or fedbuff")] = "fedavg",
    rounds: Annotated[int, typer.Option(help="Global versions to train for")] = 10,
    dataset: Annotated[str | None, typer.Option(help="mnist1d or stdlib_text (default: the model's)")] = None,
    shards: Annotated[int, typer.Option(help="Shards the data is split into (one per car)")] = 8,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration of the label split (mnist1d)")] = 0.5,
    steps: Annotated[int | None, typer.Option(help="H: local steps per round on each car")] = None,
    bits: Annotated[int | None, typer.Option(help="Quantize updates and model deltas to 4 or 8 bits")] = None,
    clients: Annotated[int | None, typer.Option(help="Reports wanted per round")] = None,
    target_accuracy: Annotated[float | None, typer.Option(help="Stop once held-out accuracy reaches this")] = None,
    aggregator: Annotated[str | None, typer.Option(help="mean, trimmed_mean, median or krum")] = None,
    byzantine: Annotated[int | None, typer.Option(help="Krum's f: hostile updates per round it must survive "
                                                        "(rounds need >= 2f + 3 reports)")] = None,
    dp_mode: Annotated[str | None, typer.Option(help="Differential privacy: none, central (the coordinator adds "
                                                     "the noise) or distributed (each car adds its share)")] = None,
    dp_clip: Annotated[float | None, typer.Option(help="DP: L2 bound on one car's update")] = None,
    dp_noise: Annotated[float | None, typer.Option(help="DP: noise multiplier sigma (noise std = sigma x "
                                                        "clip)")] = None,
    dp_target_epsilon: Annotated[float | None, typer.Option(help="DP: calibrate sigma to spend this epsilon over "
                                                                 "--rounds (instead of --dp-noise)")] = None,
    dp_delta: Annotated[float | None, typer.Option(help="DP: the delta epsilon is reported at (default 1e-5)")] = None,
    dp_budget: Annotated[float | None, typer.Option(help="DP: stop (done) before a round would spend more than "
                                                         "this epsilon")] = None,
    secure_aggregation: Annotated[bool, typer.Option(help="Mask every update so the coordinator sees only each "
                                                          "round's sum (needs >= 3 cars a round)")] = False,
    secagg_clip: Annotated[float, typer.Option(help="Secure aggregation without DP: the L2 norm each car clips "
                                                    "its update to")] = 5.0,
    setting: Annotated[list[str] | None, typer.Option("--set", help="Strategy setting KEY=VALUE, dotted for "
                                                         "nested ones, e.g. local.lr=0.02 (repeatable)")] = None,
    name: str = "",
    wait: Annotated[bool, typer.Option(help="Follow the job, then save the trained model")] = False,
    out: Annotated[Path | None, typer.Option(help="Where --wait saves the model (.safetensors)")] = None,
    url: base.Url = base.DEFAULT_URL, token: base.Token = None, data_dir: base.DataDir = base.DEFAULT_DATA_DIR,
    ca: base.CA = None,
) -> None:
    """Submit a federated training job: each car trains on data it derives itself; only compressed updates travel."""
    try:
        pairs = privacy_pairs(mode=dp_mode, clip=dp_clip, noise=dp_noise, target_epsilon=dp_target_epsilon,
                              delta=dp_delta, budget=dp_budget)
        pairs += secure_pairs(secure_aggregation, dp_mode, secagg_clip)
        pairs += [_setting(t) for t in setting or []]  # after the flags: --set has the last word
        if steps is not None:
            pairs.append((["local", "steps"], steps))
        if bits is not None:
            pairs += [(["local", "compression", "bits"], bits), (["downlink", "bits"], bits)]
        if clients is not None:
            pairs.append((["rounds", "clients_per_round"], clients))
        if aggregator is not None:
            pairs.append((["robust", "aggregator"], aggregator))
        if byzantine is not None:
            pairs.append((["robust", "byzantine"], byzantine))
        data = {"dataset": dataset or ("stdlib_text" if model == "charlm" else "mnist1d"),
                "num_vehicles": shards, "alpha": alpha}
        target = {"accuracy": target_accuracy} if target_accuracy is not None else None
        if wait and out is not None:
            base._out_path(out)
        with base._client(url, token, data_dir, ca) as client:
            status = client.submit_train(model, data=data, strategy=strategy, settings=_nested(pairs),
                                         rounds=rounds, target_metric=target, name=name or f"{strategy} {model}")
            base.console.print(f"submitted {status.job_id}: {strategy} on {model}, {rounds} rounds over {shards} "
                               "shards")
            if wait:
                with base._following(status.job_id, out or Path(f"{status.job_id}.safetensors"), url, data_dir):
                    final = views.watch_versions(client, status.job_id, rounds, base.console)
                if final.state != "done":
                    base.err.print(f"job {final.state}: {final.error}")
                    raise typer.Exit(1)
                path = out or Path(f"{status.job_id}.safetensors")
                base._write(path, client.result_bytes(status.job_id))
                base.console.print(f"model saved to {path}")
    except FleetgridError as exc:
        base._fail(exc)


def register(app: typer.Typer) -> None:
    """Onto ``fleetgrid submit`` (the group :mod:`fleetgrid.cli` made)."""
    del app  # the group is shared; nothing is added at the top level
    base.submit_app.command("train")(submit_train)
