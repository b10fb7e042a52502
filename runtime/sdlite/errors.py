"""The package's own error and warning types: everything a user can cause ends in one of these."""


class SdliteError(Exception):
    """A problem with the user's input, files or setup, described in one line."""


class SdliteWarning(UserWarning):
    """Something was changed on the way in (an alpha channel dropped, say) that the user should know."""
