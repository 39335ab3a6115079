"""fleetgrid: a fleet of parked cars as one distributed AI data center."""
