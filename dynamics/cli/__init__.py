"""The `dynamics` command line: the parser built from the commands' configs, and the small commands."""
