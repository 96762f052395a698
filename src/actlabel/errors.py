"""Errors a user can cause and fix. The CLI prints their message on one line and exits non-zero."""


class UserError(Exception):
    """Bad input or a bad request: the message names the file, row or item and the reason."""


class ProjectBusy(UserError):
    """Another process is writing the same project."""


class NotAProject(UserError):
    """The folder is not an actlabel project."""
