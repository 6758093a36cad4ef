"""Figures from arrays and tables: ROC, training curves, confusion, Kaplan-Meier, summaries."""
