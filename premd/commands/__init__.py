"""The client commands of ``premd``: each module registers its sub-commands (see premd/cli.py)."""
