"""CLI subcommands, one module each: HELP, add_arguments(parser), main(args) -> dict | None."""
