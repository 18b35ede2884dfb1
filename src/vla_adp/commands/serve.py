"""``vla-adp serve --checkpoint DIR``: the policy server for real robots (OpenVLA-OFT ``deploy.py`` protocol).

Binds to 127.0.0.1:8777 by default. Another interface needs a shared token (``--token`` or
``$VLA_ADP_TOKEN``) or, without one, an explicit ``--allow-remote``. Limits, timeouts and the threat
model: docs/serving.md.
"""

from __future__ import annotations

import logging
import os

from vla_adp.commands.common import add_checkpoint_args, add_pruner_args, build_pruner_from_args, load_policy


def add_arguments(p) -> None:
    add_checkpoint_args(p)
    add_pruner_args(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8777, help="TCP port (OpenVLA-OFT's deploy.py uses 8777)")
    p.add_argument("--token", default=None,
                   help="shared token every request must carry as 'Authorization: Bearer <token>' (default: "
                        "$VLA_ADP_TOKEN; prefer the variable: a command line is visible to other users)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host such as 0.0.0.0 without a token (trusted networks only)")
    p.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                   help="a Host name clients use to reach the server (repeatable; default: loopback names, or any "
                        "host when bound to a non-loopback interface)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a browser origin allowed to POST (repeatable; default: none, robot clients send no Origin)")
    p.add_argument("--anonymous", choices=["per-address", "refuse"], default="per-address",
                   help="requests without a session id: one session per client address with an episode rule "
                        "(default), or refuse them")
    p.add_argument("--session-ttl", type=float, default=600.0, help="seconds after which an idle session expires")
    p.add_argument("--max-sessions", type=int, default=64, help="most live sessions (robots/episodes) at once")
    p.add_argument("--max-image-side", type=int, default=2048, help="largest accepted image height/width")
    p.add_argument("--max-body-mb", type=float, default=None,
                   help="largest request body in MiB (413 above); default: what the model's images at "
                        "--max-image-side need in json-numpy form, plus 2 MiB")
    p.add_argument("--record-dir", default=None,
                   help="write one overlay mp4 per session episode here (cameras with the pruned patches masked, "
                        "gate state, displacement, kept tokens; one frame per query), finished on /reset, session "
                        "expiry or shutdown (default: off)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args) -> int:
    from vla_adp.serve.access import ANY, LOOPBACK_HOSTS, TOKEN_ENV, AccessPolicy, check_bind, is_loopback
    from vla_adp.serve.server import ServerConfig, create_app
    from vla_adp.serve.transport import uvicorn_config

    token = args.token or os.environ.get(TOKEN_ENV) or None
    check_bind(args.host, token, args.allow_remote)  # before loading a 15 GB checkpoint
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    hosts = tuple(args.allowed_host) if args.allowed_host else LOOPBACK_HOSTS if is_loopback(args.host) else (ANY,)
    access = AccessPolicy(hosts=hosts, origins=tuple(args.allow_origin), token=token)
    max_body = None if args.max_body_mb is None else int(args.max_body_mb * (1 << 20))
    config = ServerConfig(max_body_bytes=max_body, session_ttl_s=args.session_ttl, max_sessions=args.max_sessions,
                          max_image_side=args.max_image_side, record_dir=args.record_dir, anonymous=args.anonymous,
                          access=access)
    policy = load_policy(args, build_pruner_from_args(args))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(policy, config)  # checks the body limit against the model's images
    if not is_loopback(args.host) and token is None:
        logging.getLogger("vla_adp.serve").warning("serving %s without a token (--allow-remote): anyone who can "
                                                   "reach it can drive the robot", args.host)
    pruner = getattr(policy.pruner_template, "name", None) or "none"
    print(f"serving {args.checkpoint} (platform {policy.platform.name}, unnorm_key {policy.unnorm_key}, "
          f"pruner {pruner}) on http://{args.host}:{args.port}: POST /act, POST /reset, GET /health, GET /metrics"
          + (" (token required)" if token else ""), flush=True)
    import uvicorn

    server = uvicorn.Server(uvicorn_config(app, config.header_timeout_s, host=args.host, port=args.port,
                                           log_level=args.log_level))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled (a clean shutdown)
        pass
    return 0
