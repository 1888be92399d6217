"""The data contract: row types, their Arrow schemas, the table registry, manifests and the error tree."""
from schemas.errors import (ConfigError, EngineError, EngineUnavailable, ErrataError, InputError, RowError,
                            StageError, StorageError, TransientEngineError, VersionNotFound)
from schemas.rows import Attempt, ErrorRecord, Problem, Step, arrow_schema, make_id, to_table
from schemas.registry import TableSpec, get_table, register_table, registered_tables
from schemas import agent_rows  # noqa: E402,F401  (registers the agent tables: trajectories)

__all__ = ["ErrataError", "ConfigError", "InputError", "EngineError", "TransientEngineError", "EngineUnavailable", "StorageError",
           "VersionNotFound", "StageError", "RowError", "Problem", "Attempt", "ErrorRecord", "Step", "arrow_schema",
           "make_id", "to_table", "TableSpec", "get_table", "register_table", "registered_tables"]
