"""The data contract: row types, their Arrow schemas, manifests and the error tree. No behaviour."""
from schemas.errors import (ConfigError, EngineError, ErrataError, InputError, RowError, StorageError,
                            TransientEngineError, VersionNotFound)
from schemas.rows import TABLES, Attempt, ErrorRecord, Problem, Step, arrow_schema, make_id, to_table

__all__ = ["ErrataError", "ConfigError", "InputError", "EngineError", "TransientEngineError", "StorageError",
           "VersionNotFound", "RowError", "Problem", "Attempt", "ErrorRecord", "Step", "TABLES", "arrow_schema",
           "make_id", "to_table"]
