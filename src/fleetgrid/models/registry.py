"""The one place that knows models by name: every model is a `ModelSpec` bundle registered here, and the
coordinator, the agent and the CLI look models up through these functions only.

Importing it imports no torch: the specs are declared apart from the models' code, which loads with a runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleetgrid.errors import InvalidInput, UnknownModel
from fleetgrid.models import catalog, minilm
from fleetgrid.models.spec import ModelSpec, Runner, refine_spec

__all__ = [
    "ModelSpec",
    "Runner",
    "get_model_spec",
    "inspect_model_file",
    "list_models",
    "load_runner",
    "refine_spec",
    "register",
]

_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model bundle; a model module calls this once (or is listed below). Names are unique."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"model name {spec.name!r} is already registered; expected a new name")
    _REGISTRY[spec.name] = spec
    return spec


for _spec in (catalog.MNIST1D_CNN, minilm.SPEC, catalog.TORCHSCRIPT, catalog.TORCH_EXPORT):
    register(_spec)


def inspect_model_file(data: bytes) -> dict[str, Any]:
    """Vet an uploaded TorchScript or torch.export file: see :func:`fleetgrid.models.user_model.inspect_model_file`."""
    from fleetgrid.models import user_model

    return user_model.inspect_model_file(data)


def list_models() -> list[ModelSpec]:
    """Every registered model, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModel(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}") from None


def load_runner(name: str, model_file: str | Path | None = None, threads: int | None = None) -> Runner:
    """Load model ``name`` ready to run batches. ``threads`` sets torch's intra-op threads for this whole
    process (a worker process owns its process), so leave it None in a process shared with other work."""
    spec = get_model_spec(name)
    if spec.needs_model_file and model_file is None:
        raise InvalidInput(f"model {name!r} runs a user model file; expected a model_file path, got none")
    if not spec.needs_model_file and model_file is not None:
        raise InvalidInput(
            f"model {name!r} is built in and takes no model file (got {str(model_file)!r}); "
            "expected model 'torchscript' or 'torch-export' to run your own file"
        )
    if model_file is not None and not Path(model_file).is_file():
        raise InvalidInput(f"model file {str(model_file)!r} does not exist; expected the path of a readable file")
    if threads is not None:
        if threads < 1:
            raise InvalidInput(f"threads {threads}; expected a positive integer or None")
        import torch

        torch.set_num_threads(threads)
    return spec.loader(Path(model_file) if model_file is not None else None)
