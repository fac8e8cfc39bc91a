"""vqedge.commands: the ``vqedge`` command line, one module per command.

Each module registers its subcommand (``add_parser``) and imports its stage (models, export,
runtime, dataset, benchmarks, demo) only when the command runs. ``main.main`` is the entry.
"""
