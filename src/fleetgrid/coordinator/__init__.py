"""fleetgrid.coordinator"""
