"""`fidoperf` commands: plots (see fidoperf/cli.py for the shared options)."""
