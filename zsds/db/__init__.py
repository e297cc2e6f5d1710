"""The operations database: schema (:mod:`zsds.db.schema`) and access (:mod:`zsds.db.ops`).

SQLite (embedded, the default, in the archive root) and PostgreSQL (production) run the same
code and the same tests.
"""

from .ops import (RegisterResult, engine_from_config, find_calibration, init_db, make_engine,
                  raw_files_for_night, record_quarantine, register_calibration,
                  register_raw_file, table_snapshot)
from .schema import SCHEMA_VERSION, metadata

__all__ = ["metadata", "SCHEMA_VERSION", "make_engine", "init_db", "engine_from_config",
           "RegisterResult", "register_raw_file", "record_quarantine", "register_calibration",
           "find_calibration", "raw_files_for_night", "table_snapshot"]
