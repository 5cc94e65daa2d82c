"""Offline tools: replay of snapshot files through the live engine, Binance book import, synthetic
books."""
