"""fleetgrid.workloads.training"""
