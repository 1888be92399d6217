"""Agent environments behind one small interface (base.py). Nothing here imports Ray or Prefect."""
