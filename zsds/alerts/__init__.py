"""Alert packets (official ZTF Avro schema 4.02) and their distribution over Kafka.

Modules: :mod:`.schema` (packaged schema, validation), :mod:`.ids` (pid, candid),
:mod:`.objects` (objectId assignment), :mod:`.history` (prv_candidates from the DB),
:mod:`.packet` (build / serialize), :mod:`.spool` and :mod:`.kafka` (archive, spool,
sender, consumer), :mod:`.filter` (safe filter expressions), :mod:`.listen` (consumer sink,
summaries, cutout PNGs).
"""

from .ids import make_candid, make_pid, night_id
from .packet import deserialize_alert, make_alert, serialize_alert
from .schema import SCHEMA_VERSION, AlertSchemaError, parse_alert_schema, validate_alert

__all__ = ["SCHEMA_VERSION", "AlertSchemaError", "parse_alert_schema", "validate_alert",
           "make_alert", "serialize_alert", "deserialize_alert", "make_candid", "make_pid",
           "night_id"]
