"""The `gradsweep` command: one module per subcommand, registered in `main`."""
