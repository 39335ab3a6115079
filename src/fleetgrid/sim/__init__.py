"""fleetgrid.sim"""
