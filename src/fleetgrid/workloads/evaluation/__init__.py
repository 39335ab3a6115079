"""Federated evaluation: score a model on each car's own local data; only metrics leave the car.

Flower's ``configure_evaluate``/``aggregate_evaluate`` is the peer. A job names a trainable model, its weights (a
training job's result, or the weights a model ships with) and a data spec; it is planned into one unit per shard.
The car that takes a unit builds that shard locally from the spec (as a training car does), evaluates the model in
its preemptable worker and reports four numbers; the coordinator checks them against what the shard can hold and
aggregates them, weighted by examples, into per-car and fleet-wide loss and accuracy.

``messages`` holds the typed grant and report, ``car``/``task`` the vehicle side, ``driver`` the coordinator side.
"""
