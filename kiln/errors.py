"""The one error hierarchy of Kiln.

Domain code raises these; the API maps them to AWS error types and HTTP statuses in one place
(``kiln.api.errors``). Messages are written for a person who has to fix their request.
"""

from __future__ import annotations


class KilnError(Exception):
    """Base of every error Kiln raises on purpose."""

    aws_code = "ServerException"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ClientError(KilnError):
    """The request is wrong; the caller can fix it (AWS ``ClientException``, HTTP 400)."""

    aws_code = "ClientException"
    http_status = 400


class ValidationError(ClientError):
    """A field breaks a rule (pattern, range, cross-field constraint)."""


class NotFoundError(ClientError):
    """A referenced resource (queue, definition, environment, job) does not exist."""


class ConflictError(ClientError):
    """The resource exists but is in a state that forbids the operation."""


class ServerError(KilnError):
    """Kiln itself failed (AWS ``ServerException``, HTTP 500); never used for bad input."""


class AuthenticationError(KilnError):
    """The request is not signed by a key this server knows (HTTP 403, AWS's authentication codes)."""

    aws_code = "AccessDeniedException"
    http_status = 403


class MissingAuthenticationTokenError(AuthenticationError):
    """No signature at all: AWS answers `Missing Authentication Token`."""

    aws_code = "MissingAuthenticationTokenException"


class IncompleteSignatureError(AuthenticationError):
    """An Authorization header that is not a well-formed SigV4 one."""

    aws_code = "IncompleteSignatureException"


class UnrecognizedClientError(AuthenticationError):
    """The access key id is not in the server's credentials file."""

    aws_code = "UnrecognizedClientException"


class InvalidSignatureError(AuthenticationError):
    """The signature, its scope or its timestamp does not check out."""

    aws_code = "InvalidSignatureException"
