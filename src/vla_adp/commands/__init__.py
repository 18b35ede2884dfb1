"""One module per ``vla-adp`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""
