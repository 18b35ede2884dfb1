"""``vla-adp serve --checkpoint DIR``: the policy server for real robots (OpenVLA-OFT ``deploy.py`` protocol).

Binds to 127.0.0.1:8777 by default; another interface needs ``--allow-remote`` (no authentication).
"""

from __future__ import annotations

import logging

from vla_adp.commands.common import add_checkpoint_args, add_pruner_args, build_pruner_from_args, load_policy


def add_arguments(p) -> None:
    add_checkpoint_args(p)
    add_pruner_args(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8777, help="TCP port (OpenVLA-OFT's deploy.py uses 8777)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host such as 0.0.0.0 (the server has no authentication)")
    p.add_argument("--session-ttl", type=float, default=600.0, help="seconds after which an idle session expires")
    p.add_argument("--max-sessions", type=int, default=64, help="most live sessions (robots/episodes) at once")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body in MiB (413 above)")
    p.add_argument("--record-dir", default=None,
                   help="write one overlay mp4 per session episode here (cameras with the pruned patches masked, "
                        "gate state, displacement, kept tokens; one frame per query), finished on /reset, session "
                        "expiry or shutdown (default: off)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args) -> int:
    from vla_adp.serve.server import ServerConfig, check_bind, create_app

    check_bind(args.host, args.allow_remote)  # before loading a 15 GB checkpoint
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    config = ServerConfig(max_body_bytes=int(args.max_body_mb * (1 << 20)), session_ttl_s=args.session_ttl,
                          max_sessions=args.max_sessions, record_dir=args.record_dir)
    policy = load_policy(args, build_pruner_from_args(args))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(policy, config)
    pruner = getattr(policy.pruner_template, "name", None) or "none"
    print(f"serving {args.checkpoint} (platform {policy.platform.name}, unnorm_key {policy.unnorm_key}, "
          f"pruner {pruner}) on http://{args.host}:{args.port}: POST /act, POST /reset, GET /health, GET /metrics",
          flush=True)
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
