"""The errors of the domain, free of any web framework.

The service's rules (``service/``) raise these; the HTTP layer turns them into
answers in one place (``handlers/base.py``): the status, the JSON error
``{"status": N, "message": "...", "field": "..."}`` of the API or the error
page, and headers such as ``Retry-After``. Their attribute names are those of
Tornado's ``HTTPError`` (``status_code``, ``log_message``) so that code and
tests reading an error read either alike.

``log_message`` is meant for the user: it must never hold a secret, a
traceback or a database's own words.
"""


class ServiceError(Exception):
    """A request the service cannot carry out, with a message for the user."""

    #: The HTTP status the handlers answer with.
    status_code = 500

    def __init__(self, message, *, status=None, field=None, headers=None):
        super().__init__(message)
        self.log_message = message
        if status is not None:
            self.status_code = status
        #: The request's field (or setting) to change, when one is to blame.
        self.field = field
        #: Extra response headers, e.g. ``{"Retry-After": "5"}``.
        self.headers = dict(headers or {})


class FieldError(ServiceError):
    """One field of a request is wrong: 400 unless a quota says otherwise
    (403 for a size or count, 429 for too many builds at once)."""

    status_code = 400

    def __init__(self, field, message, status=400, headers=None):
        super().__init__(f"{field}: {message}", status=status, field=field, headers=headers)
        #: The reason alone, without the field's name.
        self.reason = message


class NotFound(ServiceError):
    """No such thing, or one the user may not know of (404)."""

    status_code = 404


class Forbidden(ServiceError):
    """The user may see it but not do that (403)."""

    status_code = 403


class Conflict(ServiceError):
    """Not now, in the thing's present state (409): already building, in use."""

    status_code = 409


class TooManyRequests(ServiceError):
    """Too many requests from one client or for one thing (429)."""

    status_code = 429

    def __init__(self, message, retry_after=None):
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        super().__init__(message, headers=headers)


class Unavailable(ServiceError):
    """A part the request needs cannot be used right now (503 with ``Retry-After``)."""

    status_code = 503

    def __init__(self, message, retry_after=5):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class DiskFull(ServiceError):
    """The engine's disk has too little free space to build (507)."""

    status_code = 507
