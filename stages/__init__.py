"""Stages: plain Python over a batch of rows. Nothing here imports Ray or Prefect."""
