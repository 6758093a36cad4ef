"""Errors raised for the user, kept free of heavy imports so the CLI can catch them cheaply."""


class WeightsError(RuntimeError):
    """Encoder weights are missing or do not fit; the message says what to do."""
