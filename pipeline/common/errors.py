"""Errors a user can fix: the CLI prints their message on one line, without a traceback, and exits 2."""


class PipelineError(Exception):
    """Base of every error whose message names the file (and line or key) and the problem."""


class InputError(PipelineError):
    """Bad input data: a missing dataset root, a malformed annotation, an undecodable video."""
