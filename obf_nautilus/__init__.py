"""NautilusTrader integration (optional extra ``obf-features[nautilus]``, Python >= 3.12).

* ``data``: the custom data types strategies subscribe to: ``OBBarFeatures`` (one per bar: how
  the bar resolved, market and macro values) and ``OBAssetFeatures`` (one per asset per bar:
  placement and signal values).
* ``actor.OBFeaturesActor``: on each bar close calls ``step_live`` on an OB engine (the live
  ``HazelcastOBEngine`` or the ``OfflineOBEngine``, unchanged) and publishes that bar's features.
* ``catalog``: writes bar records (replay output, day files) into a ``ParquetDataCatalog``.

Imports nautilus_trader, engine_adapter and obf_contract only: no worker code, no numba.
"""
