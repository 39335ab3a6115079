"""``python -m fleetgrid`` is the ``fleetgrid`` command."""

from .cli import main

main()
