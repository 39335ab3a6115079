"""Federated training as a workload: ``car`` is the vehicle's side of a share of a round, ``task`` the local
training it runs in the worker, ``driver`` the coordinator's round loop over the fleet's leases. The maths
(strategies, compression, local training) lives in :mod:`fleetgrid.workloads.training`.

This package imports nothing heavy, so a car's main process stays free of torch until it trains.
"""
