"""`fidoperf` commands: sweep (see fidoperf/cli.py for the shared options)."""
