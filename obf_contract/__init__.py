"""The contract between the obf-features worker and its readers, and how to reach the grid.

Small on purpose: the trader's adapter imports it, so it needs only the stdlib, hazelcast and orjson.
- ``keys``: the symbol grammar and the input map's keys.
- ``cluster``: default cluster/map names and the one validator per kind of value (address, map name).
- ``record``: the per-bar record schema, its version and its JSON codec.
- ``client``: ``make_client()``, the one place a Hazelcast client is built.
- ``security``, ``pickle_guard``, ``reactor_fix``: what ``make_client()`` applies.
"""
