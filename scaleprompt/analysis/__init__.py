"""The papers' analyses as tools (``scaleprompt analyze``): UPT's variance statistics, ProVP's feature deviation,
prompt-token attention maps. Each subcommand lives in its own module (``variance``, ``deviation``, ``attention``)
with ``add_arguments(parser)`` and ``run(args) -> int``; :mod:`scaleprompt.commands.analyze` wires them."""
