"""Prefect flows and the `errata` CLI. The only package that imports Prefect."""
