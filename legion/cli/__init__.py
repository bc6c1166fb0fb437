"""The `legion` command line."""
