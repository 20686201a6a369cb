"""Errors a user can fix. The CLI prints them as one message, never as a traceback."""


class ReasonerError(Exception):
    """Base class for mistakes in input, configuration or environment that the user can fix."""


class ConfigError(ReasonerError):
    """A configuration file is missing, unreadable or does not match its schema."""
