"""The name of a task, the one thing the stages (shard files) and the tables (row names) share: kept apart
from the row names of methods.py, so that a new row changes no stage's code fingerprint (no torch here)."""


def task_name(suite: str, task) -> str:
    """Shard and row name of a task: `vel-0.225` for Cheetah-Vel, the metaworld name for MetaWorld."""
    return f"vel-{float(task):g}" if suite == "cheetah-vel" else str(task)
