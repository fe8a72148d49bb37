"""pytest fixtures, loaded automatically through the ``pytest11`` entry point."""
