"""fleetgrid.workloads"""
