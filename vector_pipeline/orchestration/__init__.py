"""Thin Dagster adapters over the sync engine: resources, the table asset factory, definitions."""
