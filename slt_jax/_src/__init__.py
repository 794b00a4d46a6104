"""The engine's internals: what users never import (optax's ``_src`` idiom).

``validation`` (input checks before compiling), ``program`` (the compiled chunk), ``planning``
(configurations, groups, schedule, memory), ``multihost`` (sharding over devices and processes) and
``checkpoint`` (resumable sampler state). Public entry points live one level up.
"""
