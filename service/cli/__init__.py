"""Subcommands of the ``pollinid`` CLI; each module exposes ``register(subparsers)``."""
