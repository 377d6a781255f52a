"""End-to-end pipelines (the demo) built from the library and the CLI commands."""
