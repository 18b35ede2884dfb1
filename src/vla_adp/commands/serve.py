"""``vla-adp serve --checkpoint DIR``: the policy server for real robots.

Three wire protocols: ``--protocol oft`` (default), OpenVLA-OFT's ``deploy.py`` HTTP protocol
(:mod:`vla_adp.serve.server`), on port 8777; ``--protocol openpi``, openpi's msgpack-over-websocket
protocol that ``openpi-client`` speaks (:mod:`vla_adp.serve.openpi_server`), on port 8000;
``--protocol vla-eval``, a vla-eval model server (:mod:`vla_adp.serve.vla_eval_server`), on port 8000.
Binds to 127.0.0.1 by default. Another interface needs a shared token (``--token`` or
``$VLA_ADP_TOKEN``; HTTP protocol only) or, without one, an explicit ``--allow-remote``. Limits,
timeouts and the threat model: docs/serving.md.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from vla_adp.commands.common import (add_checkpoint_args, add_family_arg, add_pruner_args, build_pruner_from_args,
                                     load_policy)
from vla_adp.families import PI0_FAMILIES

PORTS = {"oft": 8777, "openpi": 8000, "vla-eval": 8000}  # deploy.py's, openpi's and vla-eval's defaults


def add_arguments(p) -> None:
    add_checkpoint_args(p)
    add_family_arg(p)
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
    p.add_argument("--token", default=None,
                   help="oft: shared token every request must carry as 'Authorization: Bearer <token>' (default: "
                        "$VLA_ADP_TOKEN; prefer the variable: a command line is visible to other users)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host such as 0.0.0.0 without a token (trusted networks only)")
    p.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                   help="oft: a Host name clients use to reach the server (repeatable; default: loopback names, or "
                        "any host when bound to a non-loopback interface)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="oft: a browser origin allowed to POST (repeatable; default: none, robot clients send no Origin)")
    p.add_argument("--anonymous", choices=["per-address", "refuse"], default="per-address",
                   help="oft: requests without a session id: one session per client address with an episode rule "
                        "(default), or refuse them")
    p.add_argument("--session-ttl", type=float, default=600.0, help="seconds after which an idle session expires (oft)")
    p.add_argument("--max-sessions", type=int, default=64,
                   help="most live sessions (oft) or open connections (openpi) at once")
    p.add_argument("--max-image-side", type=int, default=2048, help="largest accepted image height/width")
    p.add_argument("--max-body-mb", type=float, default=None,
                   help="largest request body (oft: 413 above) or websocket frame (openpi: closed with 1009) in MiB; "
                        "default: what the model's images at --max-image-side need, plus 2 MiB")
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
    from vla_adp.serve.access import ANY, LOOPBACK_HOSTS, TOKEN_ENV, AccessPolicy, check_bind, is_loopback
    from vla_adp.serve.server import ServerConfig

    token = args.token or os.environ.get(TOKEN_ENV) or None
    if token is not None and args.protocol != "oft":
        raise ValueError(f"--token (or ${TOKEN_ENV}) is supported by --protocol oft only; the {args.protocol} "
                         "protocol has no authentication: keep it on loopback or a trusted network (--allow-remote)")
    check_bind(args.host, token, args.allow_remote)  # before loading a 15 GB checkpoint
    port = PORTS[args.protocol] if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    if args.key_map is not None and args.protocol != "openpi":
        raise ValueError("--key-map applies to --protocol openpi only")
    key_map = load_key_map(args.key_map) if args.protocol == "openpi" else None
    if args.family in PI0_FAMILIES and args.protocol == "vla-eval":
        raise ValueError(f"--family {args.family} serves --protocol oft or openpi: vla-eval's LIBERO benchmark "
                         "runs OpenVLA-OFT's conventions (env seed 0, its gripper sign), not π0's LIBERO protocol")
    if args.family in PI0_FAMILIES and args.record_dir:
        raise ValueError(f"--record-dir draws OpenVLA-OFT's image pipeline (centre crop, resize); --family "
                         f"{args.family} has no episode recorder")
    if args.protocol == "vla-eval":
        import importlib.util

        if importlib.util.find_spec("vla_eval") is None:  # before loading a 15 GB checkpoint
            raise ValueError("--protocol vla-eval needs vla-eval: pip install 'vla-adp[vla-eval]'")
    hosts = tuple(args.allowed_host) if args.allowed_host else LOOPBACK_HOSTS if is_loopback(args.host) else (ANY,)
    access = AccessPolicy(hosts=hosts, origins=tuple(args.allow_origin), token=token)
    max_body = None if args.max_body_mb is None else int(args.max_body_mb * (1 << 20))
    config = ServerConfig(max_body_bytes=max_body, session_ttl_s=args.session_ttl, max_sessions=args.max_sessions,
                          max_image_side=args.max_image_side, record_dir=args.record_dir, anonymous=args.anonymous,
                          access=access)
    policy = load_policy(args, build_pruner_from_args(args))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not is_loopback(args.host) and token is None:
        logging.getLogger("vla_adp.serve").warning("serving %s without a token (--allow-remote): anyone who can "
                                                   "reach it can drive the robot", args.host)
    pruner = getattr(policy.pruner_template, "name", None) or "none"
    what = (f"serving {args.checkpoint} (platform {policy.platform.name}, unnorm_key {policy.unnorm_key}, "
            f"pruner {pruner})")
    if args.protocol == "openpi":
        return serve_openpi(policy, config, key_map, args.host, port, what)
    if args.protocol == "vla-eval":
        return serve_vla_eval(policy, config, args.host, port, what)
    from vla_adp.serve.server import create_app
    from vla_adp.serve.transport import uvicorn_config

    app = create_app(policy, config)  # checks the body limit against the model's images
    print(f"{what} on http://{args.host}:{port}: POST /act, POST /reset, GET /health, GET /metrics"
          + (" (token required)" if token else ""), flush=True)
    import uvicorn

    server = uvicorn.Server(uvicorn_config(app, config.header_timeout_s, host=args.host, port=port,
                                           log_level=args.log_level))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled (a clean shutdown)
        pass
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
