"""Layers of the MIL models: regions, region scorers, query-aware and dense attention, blocks."""
