"""The one place where exceptions become AWS error responses.

botocore finds the error code in the `x-amzn-ErrorType` header (then the body's `__type`) and the
message in the body's `message`; only `ClientException` and `ServerException` are modeled, so those
are the only codes boto3 turns into `client.exceptions.*`. Unexpected exceptions never leak their
text: the traceback goes to the server log, the client gets the request id to quote.
"""

from __future__ import annotations

import logging
import uuid

from starlette.responses import JSONResponse

from kiln.errors import KilnError

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-amzn-RequestId"
ERROR_TYPE_HEADER = "x-amzn-ErrorType"
SERVER_EXCEPTION = "ServerException"


def describe_error(exc: BaseException, request_id: str) -> tuple[int, str, str]:
    """(HTTP status, AWS error code, message) for any exception; logs what the client cannot see."""
    if isinstance(exc, KilnError):
        if exc.http_status >= 500:
            logger.error("request %s failed: %s", request_id, exc.message, exc_info=exc)
        else:
            logger.debug("request %s rejected: %s", request_id, exc.message)
        return exc.http_status, exc.aws_code, exc.message
    logger.error("request %s failed unexpectedly", request_id, exc_info=exc)
    message = f"Kiln hit an internal error (request id {request_id}); details are in the server log"
    return 500, SERVER_EXCEPTION, message


def error_response(exc: BaseException, request_id: str | None = None) -> JSONResponse:
    """The AWS REST-JSON error form: status, `x-amzn-ErrorType`, `{"__type", "message"}` body.

    Pass `request.state.request_id` (set by the app's middleware) so log and header agree; without
    one a fresh id is used. Routes may equally just raise: the middleware calls this for them.
    """
    request_id = request_id or str(uuid.uuid4())
    status, code, message = describe_error(exc, request_id)
    headers = {ERROR_TYPE_HEADER: code, REQUEST_ID_HEADER: request_id}
    return JSONResponse({"__type": code, "message": message}, status_code=status, headers=headers)
