"""Batch inference: a job's inputs sharded into work units, each run on one car (or k, with a quorum), the results
assembled in input order.

``car`` is the vehicle's side of a unit, ``task`` the compute it runs in the worker, ``driver`` the coordinator's
side. This package imports nothing heavy, so a car's main process stays free of torch.
"""
