"""fleetgrid.data"""
