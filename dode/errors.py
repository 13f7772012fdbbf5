"""Errors that are the user's to fix: reported by ``dode-run`` as one clear message, no traceback."""


class UserError(Exception):
    "An error in the user's input or files: reported without a traceback."


class InvalidChoice(UserError, ValueError):
    """An unknown name (solver, grid, distillation form, …); the message lists the valid choices."""


class InvalidNFE(UserError, ValueError):
    """A solver cannot spend exactly the requested number of network evaluations."""


class CorrectionMismatch(UserError, ValueError):
    """A fitted correction used with another solver, NFE or σ grid than it was fitted for."""
