"""`fidoperf` commands: bench (see fidoperf/cli.py for the shared options)."""
