"""Everything Touchpoint raises on purpose.

::

    TouchpointError
    ├── UserError                 a person can fix it; the CLI prints one line, no traceback
    │   ├── ConfigError           a setting is missing or invalid (the message names it)
    │   ├── DefinitionError       schedules/ or message_templates/ are invalid (file:line)
    │   │   └── TemplateRenderError  a template failed while rendering one message
    │   ├── ImportFileError       a CSV file cannot be read at all (the import is refused)
    │   ├── DatabaseNotReady      the schema is older or newer than this Touchpoint
    │   └── NotFound              an id given on the command line does not exist
    └── ChannelError              a provider did not take a message (the dispatcher's concern)
        ├── TransientChannelError   timeout before sending, 429, 5xx: retry later
        ├── PermanentChannelError   invalid number, unsubscribed: fail, try the next channel
        └── AmbiguousChannelError   the provider may have taken it (read timeout): never
                                    re-sent blindly; ``unknown`` until a callback tells

The dispatcher catches :class:`ChannelError` (and :class:`TemplateRenderError`, which it
records as ``template_error``) and nothing else: a :class:`ConfigError` stops the run.
"""

from __future__ import annotations

from datetime import datetime


class TouchpointError(Exception):
    """Touchpoint failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class UserError(TouchpointError):
    """Something a user can fix went wrong."""


class ConfigError(UserError):
    """A setting is missing or invalid."""


class DefinitionError(UserError):
    """Journey or template definitions are invalid."""

    def __init__(self, message: str | None = None, diagnostics: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.diagnostics = diagnostics


class TemplateRenderError(DefinitionError):
    """A message template failed to render."""


class ImportFileError(UserError):
    """The file cannot be imported."""


class DatabaseNotReady(UserError):
    """The database schema does not match this version of Touchpoint."""


class NotFound(UserError):
    """No such record."""


class ChannelError(TouchpointError):
    """A provider did not accept a message.

    ``code`` is the provider's error code (e.g. Twilio 21211), ``status`` the HTTP status,
    ``excerpt`` a short, redacted excerpt of the provider's reply, ``retry_after`` when a
    transient error says when to come back, ``opted_out`` when a permanent error means the
    recipient unsubscribed at the provider (Twilio 21610).
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        provider: str = "",
        code: str | None = None,
        status: int | None = None,
        excerpt: str = "",
        touch_point_id: int | None = None,
        retry_after: datetime | None = None,
        opted_out: bool = False,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.code = code
        self.status = status
        self.excerpt = excerpt
        self.touch_point_id = touch_point_id
        self.retry_after = retry_after
        self.opted_out = opted_out

    def describe(self) -> str:
        """One line for the ledger: provider, status, code and message."""
        parts = [self.provider or "provider"]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.code:
            parts.append(f"code {self.code}")
        return f"{' '.join(parts)}: {self.message}"


class TransientChannelError(ChannelError):
    """The provider is temporarily unavailable; the message was not taken."""


class PermanentChannelError(ChannelError):
    """The provider refused the message for good."""


class AmbiguousChannelError(ChannelError):
    """The provider may or may not have taken the message."""
