"""The ``texup`` command: :mod:`.main` (argparse, the entry point), one module per subcommand (``upscale``,
``engines``, ``models``, ``train``, ``worker``).

Each subcommand imports its work only when it runs, so ``texup --help`` is instant; ``texup upscale``, ``texup
engines`` and ``texup worker`` import torch only when the torch engine is chosen (or ``auto`` measures it). Printing
is allowed here (and nowhere else in the library: ruff's T201): the CLI is where progress and errors meet the user.
"""
