"""A server interceptor that answers INVALID_ARGUMENT to requests that are not valid protobuf.

Without it grpcio answers UNKNOWN and logs a traceback for an undecodable request, before any of
our code runs (invariant 7: bad input gets a precise status, never a crash or a stack trace).
The frontend and the vault node both install it (one copy, here).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

MALFORMED = object()  # what `lenient` hands the handler for bytes that do not decode


def lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """`parse` that returns MALFORMED for bytes that are not a valid message (bad protobuf or
    bad UTF-8 in a string field) instead of raising into grpcio, which would answer UNKNOWN."""

    def parse_or_malformed(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, UnicodeDecodeError):
            return MALFORMED

    return parse_or_malformed


class RejectUndecodable(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Turns a request deserialization failure into INVALID_ARGUMENT for unary-unary methods."""

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        inner = handler.unary_unary

        async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if request is MALFORMED:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "request is not a valid protobuf message"
                )
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
