"""Route groups kept in their own modules, each registered from :func:`fleetgrid.coordinator.app.create_app`."""
