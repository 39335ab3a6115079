"""fleetgrid.agent"""
