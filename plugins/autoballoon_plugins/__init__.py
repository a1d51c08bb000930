"""autoballoon's built-in plugins, grouped by kind.

The folder is ``plugins/`` at the top of the checkout; the import name is
``autoballoon_plugins``. :mod:`.sources` holds the pressure sources, :mod:`.policies`
the policies, :mod:`.backends` the backends (inventory and actuators). The core
registers them by its module list (``autoballoon_core.plugins.BUILTIN_PLUGINS``).
"""
