"""The floor: the smallest valid ext_proc server on our stack (``python -m benchmarks.bench_extproc
--serve-null PORT``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

from benchmarks.extproc.workload import SERVICE, install_uvloop


def serve_null(port: int) -> int:
    """The floor: the smallest valid ext_proc server on our stack. Prints one JSON line when serving."""
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    from picker.extproc.server import (
        _FRAME_SLACK,
        DEFAULT_MAX_BODY_BYTES,
        DEFAULT_STREAM_WINDOW,
        window_options,
    )

    request_headers_reply = pb.ProcessingResponse()
    request_headers_reply.request_headers.SetInParent()
    response_headers_reply = pb.ProcessingResponse()
    response_headers_reply.response_headers.SetInParent()
    trailers = {"request_trailers": pb.ProcessingResponse(), "response_trailers": pb.ProcessingResponse()}
    trailers["request_trailers"].request_trailers.SetInParent()
    trailers["response_trailers"].response_trailers.SetInParent()

    async def process(_requests: Any, context: Any) -> None:
        read, write, eof = context.read, context.write, grpc.aio.EOF
        while True:
            request = await read()
            if request is eof:
                return
            kind = request.WhichOneof("request")
            if kind == "request_headers":
                await write(request_headers_reply)
            elif kind == "request_body":
                reply = pb.ProcessingResponse()
                streamed = reply.request_body.response.body_mutation.streamed_response
                streamed.body = request.request_body.body
                streamed.end_of_stream = request.request_body.end_of_stream
                await write(reply)
            elif kind == "response_headers":
                await write(response_headers_reply)
            elif kind == "response_body":
                reply = pb.ProcessingResponse()
                streamed = reply.response_body.response.body_mutation.streamed_response
                streamed.body = request.response_body.body
                end = streamed.end_of_stream = request.response_body.end_of_stream
                await write(reply)
                if end:
                    return
            else:
                await write(trailers[kind])

    async def main() -> None:
        server = grpc.aio.server(
            options=[
                # the same transport settings as ``picker serve`` by default (its fixed stream window)
                *window_options(DEFAULT_STREAM_WINDOW),
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", DEFAULT_MAX_BODY_BYTES + _FRAME_SLACK),
            ]
        )
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Process": grpc.stream_stream_rpc_method_handler(
                    process,
                    request_deserializer=pb.ProcessingRequest.FromString,
                    response_serializer=pb.ProcessingResponse.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
        await stop.wait()
        await server.stop(0)

    install_uvloop()
    asyncio.run(main())
    return 0
