"""The papers' analyses as tools (``scaleprompt analyze``): UPT's variance statistics, ProVP's feature deviation,
prompt-token attention maps. Each subcommand lives in its own module (``variance``, ``deviation``, ``attention``)
with ``add_arguments(parser)`` and ``run(args) -> int``; :mod:`scaleprompt.commands.analyze` wires them.

``scaleprompt analyze ... --help`` imports every analysis module to build its parser (0.3 s), so they import torch,
open_clip, sklearn, the engine and the methods inside the functions that use them (``# (import cost: ...)``):
importing torch alone takes 2-4 s, the engine's evaluation 10 s."""
