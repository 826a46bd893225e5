#!/usr/bin/env python3
"""Container health probe (standard library only; slim images have no curl).

    gradmesh-healthcheck                        # GET /healthz of this container's service
    gradmesh-healthcheck --rpc URL [--contract ADDR]   # the chain: RPC answers, code deployed

The service address is 127.0.0.1 and the port of $GRADMESH_HTTP (host:port, the services'
--http fallback) if set, else $GRADMESH_HTTP_PORT. Exit 0 healthy, 1 not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request

TIMEOUT_S = 4.0


def healthz_url() -> str:
    http = os.environ.get("GRADMESH_HTTP", "")
    port = http.rpartition(":")[2] if http else os.environ.get("GRADMESH_HTTP_PORT", "")
    if not port.isdigit():
        raise SystemExit("gradmesh-healthcheck: set GRADMESH_HTTP_PORT (or GRADMESH_HTTP)")
    return f"http://127.0.0.1:{port}/healthz"


def check_http(url: str) -> None:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        if response.status != 200:
            raise OSError(f"{url}: HTTP {response.status}")


def rpc(url: str, method: str, params: list[object]) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        reply = json.load(response)
    if "error" in reply:
        raise OSError(f"{method}: {reply['error']}")
    return reply["result"]


def check_chain(url: str, contract: str | None) -> None:
    rpc(url, "eth_blockNumber", [])
    if contract and rpc(url, "eth_getCode", [contract, "latest"]) in ("0x", "", None):
        raise OSError(f"no contract code at {contract} yet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradmesh-healthcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpc", help="check a JSON-RPC endpoint instead of /healthz")
    parser.add_argument("--contract", help="with --rpc: also require code at this address")
    args = parser.parse_args(argv)
    try:
        if args.rpc:
            check_chain(args.rpc, args.contract)
        else:
            check_http(healthz_url())
    except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts are OSErrors
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
