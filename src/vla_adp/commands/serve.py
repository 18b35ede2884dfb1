"""``vla-adp serve --checkpoint DIR``: the policy server for real robots.

Three wire protocols: ``--protocol oft`` (default), OpenVLA-OFT's ``deploy.py`` HTTP protocol
(:mod:`vla_adp.serve.server`), on port 8777; ``--protocol openpi``, openpi's msgpack-over-websocket
protocol that ``openpi-client`` speaks (:mod:`vla_adp.serve.openpi_server`), on port 8000;
``--protocol vla-eval``, a vla-eval model server (:mod:`vla_adp.serve.vla_eval_server`), on port 8000.
Binds to 127.0.0.1 by default; another interface needs ``--allow-remote`` (no authentication).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from vla_adp.commands.common import add_checkpoint_args, add_pruner_args, build_pruner_from_args, load_policy

PORTS = {"oft": 8777, "openpi": 8000, "vla-eval": 8000}  # deploy.py's, openpi's and vla-eval's defaults


def add_arguments(p) -> None:
    add_checkpoint_args(p)
    add_pruner_args(p)
    p.add_argument("--protocol", choices=sorted(PORTS), default="oft",
                   help="oft = OpenVLA-OFT deploy.py over HTTP (default); openpi = openpi's websocket protocol "
                        "(openpi-client's WebsocketClientPolicy), one connection per robot episode; vla-eval = a "
                        "vla-eval model server (its benchmarks connect to it)")
    p.add_argument("--key-map", default=None,
                   help="openpi only: JSON object (or a .json file) renaming client observation keys to ours, e.g. "
                        '\'{"observation/image": "full_image", "observation/wrist_image": "wrist_image", '
                        '"observation/state": "state", "prompt": "instruction"}\' (the default: openpi\'s LIBERO example)')
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default: 8777 for oft as deploy.py, 8000 for openpi)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host such as 0.0.0.0 (the server has no authentication)")
    p.add_argument("--session-ttl", type=float, default=600.0, help="seconds after which an idle session expires (oft)")
    p.add_argument("--max-sessions", type=int, default=64,
                   help="most live sessions (oft) or open connections (openpi) at once")
    p.add_argument("--max-body-mb", type=float, default=16.0,
                   help="largest request body (oft: 413 above) or websocket frame (openpi: closed with 1009) in MiB")
    p.add_argument("--record-dir", default=None,
                   help="write one overlay mp4 per session episode here (cameras with the pruned patches masked, "
                        "gate state, displacement, kept tokens; one frame per query), finished on /reset, session "
                        "expiry or shutdown (default: off)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def load_key_map(text: str | None) -> dict[str, str]:
    """``--key-map``: a JSON object, or the path of a JSON file holding one."""
    from vla_adp.serve.openpi_server import OPENPI_LIBERO_KEYS, check_key_map

    if text is None:
        return dict(OPENPI_LIBERO_KEYS)
    source = Path(text).read_text() if not text.lstrip().startswith("{") else text
    try:
        return check_key_map(json.loads(source))
    except json.JSONDecodeError as e:
        raise ValueError(f"--key-map is not a JSON object ({e}): {text!r}") from None


def run(args) -> int:
    from vla_adp.serve.server import ServerConfig, check_bind

    check_bind(args.host, args.allow_remote)  # before loading a 15 GB checkpoint
    port = PORTS[args.protocol] if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    if args.key_map is not None and args.protocol != "openpi":
        raise ValueError("--key-map applies to --protocol openpi only")
    key_map = load_key_map(args.key_map) if args.protocol == "openpi" else None
    if args.protocol == "vla-eval":
        import importlib.util

        if importlib.util.find_spec("vla_eval") is None:  # before loading a 15 GB checkpoint
            raise ValueError("--protocol vla-eval needs vla-eval: pip install 'vla-adp[vla-eval]'")
    config = ServerConfig(max_body_bytes=int(args.max_body_mb * (1 << 20)), session_ttl_s=args.session_ttl,
                          max_sessions=args.max_sessions, record_dir=args.record_dir)
    policy = load_policy(args, build_pruner_from_args(args))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pruner = getattr(policy.pruner_template, "name", None) or "none"
    what = (f"serving {args.checkpoint} (platform {policy.platform.name}, unnorm_key {policy.unnorm_key}, "
            f"pruner {pruner})")
    if args.protocol == "openpi":
        return serve_openpi(policy, config, key_map, args.host, port, what)
    if args.protocol == "vla-eval":
        return serve_vla_eval(policy, config, args.host, port, what)
    from vla_adp.serve.server import create_app

    app = create_app(policy, config)
    print(f"{what} on http://{args.host}:{port}: POST /act, POST /reset, GET /health, GET /metrics", flush=True)
    import uvicorn

    uvicorn.run(app, host=args.host, port=port, log_level=args.log_level)
    return 0


def serve_openpi(policy, config, key_map, host: str, port: int, what: str) -> int:
    import asyncio

    from vla_adp.serve.openpi_server import OpenpiServer, serve_forever

    server = OpenpiServer(policy, config, key_map)
    print(f"{what} on ws://{host}:{port} (openpi websocket protocol; GET /healthz, GET /metrics); "
          f"key map {key_map}", flush=True)
    try:
        asyncio.run(serve_forever(server, host, port))
    except KeyboardInterrupt:
        pass
    return 0


def serve_vla_eval(policy, config, host: str, port: int, what: str) -> int:
    from vla_eval.model_servers.serve import serve

    from vla_adp.serve.vla_eval_server import VlaAdpModelServer

    print(f"{what} on ws://{host}:{port} as a vla-eval model server (GET /health)", flush=True)
    try:
        serve(VlaAdpModelServer(policy, config), host=host, port=port)
    except KeyboardInterrupt:
        pass
    return 0
