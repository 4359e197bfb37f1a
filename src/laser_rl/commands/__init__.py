"""CLI subcommands: thin wrappers that parse flags and call the library. Heavy imports stay inside run()."""
