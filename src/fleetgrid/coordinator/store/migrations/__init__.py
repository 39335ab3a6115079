"""Alembic's script directory for the store's schema (env.py and versions/); run it through :mod:`..migrate`."""
