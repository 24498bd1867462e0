"""The one place where exceptions become AWS error responses.

Batch (REST-JSON): botocore finds the error code in the `x-amzn-ErrorType` header (then the body's
`__type`) and the message in the body's `message`; only `ClientException` and `ServerException` are
modeled, so those are the only codes boto3 turns into `client.exceptions.*`.

CloudWatch Logs (JSON 1.1) uses the same body but its own codes (`ResourceNotFoundException`,
`InvalidParameterException`, `ServiceUnavailableException`): `LOGS` translates Kiln's error classes.

Unexpected exceptions never leak their text: the traceback goes to the server log, the client gets
the request id to quote.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from starlette.responses import JSONResponse

from kiln.errors import ClientError, KilnError, NotFoundError

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-amzn-RequestId"
ERROR_TYPE_HEADER = "x-amzn-ErrorType"
SERVER_EXCEPTION = "ServerException"


@dataclass(frozen=True)
class Dialect:
    """How one AWS service spells errors: its codes for Kiln's error classes and its media type.

    `codes` is searched along the exception's class hierarchy (most specific first); a class not
    found there keeps its own `aws_code` (Batch's `ClientException` / `ServerException`).
    """

    media_type: str = "application/json"
    codes: dict[type[KilnError], str] = field(default_factory=dict)
    server_code: str = SERVER_EXCEPTION

    def code_of(self, exc: KilnError) -> str:
        for kind in type(exc).__mro__:
            if kind in self.codes:
                return self.codes[kind]
        return exc.aws_code


BATCH = Dialect()
LOGS = Dialect(
    media_type="application/x-amz-json-1.1",
    codes={
        NotFoundError: "ResourceNotFoundException",
        ClientError: "InvalidParameterException",
        KilnError: "ServiceUnavailableException",
    },
    server_code="ServiceUnavailableException",
)


def describe_error(exc: BaseException, request_id: str, dialect: Dialect = BATCH) -> tuple[int, str, str]:
    """(HTTP status, AWS error code, message) for any exception; logs what the client cannot see."""
    if isinstance(exc, KilnError):
        if exc.http_status >= 500:
            logger.error("request %s failed: %s", request_id, exc.message, exc_info=exc)
        else:
            logger.debug("request %s rejected: %s", request_id, exc.message)
        return exc.http_status, dialect.code_of(exc), exc.message
    logger.error("request %s failed unexpectedly", request_id, exc_info=exc)
    message = f"Kiln hit an internal error (request id {request_id}); details are in the server log"
    return 500, dialect.server_code, message


def error_response(exc: BaseException, request_id: str | None = None, dialect: Dialect = BATCH) -> JSONResponse:
    """The AWS JSON error form: status, `x-amzn-ErrorType`, `{"__type", "message"}` body.

    Pass `request.state.request_id` (set by the app's middleware) so log and header agree; without
    one a fresh id is used. Batch routes may equally just raise: the middleware calls this for them.
    """
    request_id = request_id or str(uuid.uuid4())
    status, code, message = describe_error(exc, request_id, dialect)
    headers = {ERROR_TYPE_HEADER: code, REQUEST_ID_HEADER: request_id}
    body = {"__type": code, "message": message}
    return JSONResponse(body, status_code=status, headers=headers, media_type=dialect.media_type)
