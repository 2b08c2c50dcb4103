"""gRPC servers and an xDS gRPC client for tests/grpc_e2e.rs (PyPI grpcio, no protoc).

  serve ADDR NAME          a gRPC server on ADDR whose method /meshflow.test.Echo/Who answers
                           NAME (raw bytes, a generic handler, no generated code); prints
                           "ready" once it serves, then runs until killed.
  call TARGET COUNT [K=V]  COUNT unary calls to /meshflow.test.Echo/Who on TARGET (e.g.
                           xds:///greeter.default.svc.cluster.local:7070, resolved through
                           the xDS server of $GRPC_XDS_BOOTSTRAP), with metadata K=V; prints one
                           JSON line: {"answers": {NAME: count, ...}, "errors": [...]}.
  watch TARGET NAME SECS   on one channel (one xDS client, one ADS stream), a call every 50 ms
                           until 10 answers in a row are NAME: prints "calling" after the
                           first answer, then one JSON line {"answers": {...}} and exits 0;
                           exits 1 after SECS seconds without.
"""

import json
import sys
import time
from concurrent import futures

import grpc

METHOD = "/meshflow.test.Echo/Who"


def serve(addr, name):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    answer = name.encode()
    handler = grpc.method_handlers_generic_handler(
        "meshflow.test.Echo",
        {"Who": grpc.unary_unary_rpc_method_handler(lambda request, context: answer)},
    )
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(addr) == 0:
        print(f"cannot bind {addr}", file=sys.stderr, flush=True)
        sys.exit(1)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(target, count, metadata):
    answers = {}
    errors = []
    with grpc.insecure_channel(target) as channel:
        who = channel.unary_unary(METHOD)
        for _ in range(count):
            try:
                reply = who(b"", timeout=10, metadata=metadata, wait_for_ready=True)
                name = reply.decode()
                answers[name] = answers.get(name, 0) + 1
            except grpc.RpcError as e:
                errors.append(f"{e.code()}: {e.details()}")
                time.sleep(0.1)
    print(json.dumps({"answers": answers, "errors": errors}), flush=True)


def watch(target, expect, secs):
    answers = {}
    streak = 0
    deadline = time.monotonic() + secs
    announced = False
    with grpc.insecure_channel(target) as channel:
        who = channel.unary_unary(METHOD)
        while time.monotonic() < deadline:
            try:
                name = who(b"", timeout=10, wait_for_ready=True).decode()
            except grpc.RpcError as e:
                name = f"error {e.code()}"
            answers[name] = answers.get(name, 0) + 1
            if not announced:
                print("calling", flush=True)
                announced = True
            streak = streak + 1 if name == expect else 0
            if streak >= 10:
                print(json.dumps({"answers": answers}), flush=True)
                return 0
            time.sleep(0.05)
    print(json.dumps({"answers": answers, "timeout": True}), flush=True)
    return 1


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 4 and sys.argv[1] == "call":
        metadata = [tuple(kv.split("=", 1)) for kv in sys.argv[4:]]
        call(sys.argv[2], int(sys.argv[3]), metadata)
    elif len(sys.argv) == 5 and sys.argv[1] == "watch":
        sys.exit(watch(sys.argv[2], sys.argv[3], float(sys.argv[4])))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
