"""The models the fleet can run, each registered by name as one small bundle.

Import the public API from `fleetgrid.models.registry`. This package module stays empty so that
`fleetgrid.models.spec` (and input parsing built on it) can be imported without loading torch.
"""
