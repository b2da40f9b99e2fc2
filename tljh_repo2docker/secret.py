"""Reading the file that holds the cookie secret.

Two formats are found on hubs: hex text (what this service writes) and the
raw bytes that tljh-repo2docker 3.x writes (32 random bytes). Both are read
as they are; the file is never rewritten, so going back to 3.x still works.
"""

import string
from pathlib import Path

#: Fewer bytes than this do not make a secret worth signing cookies with.
MIN_SECRET_BYTES = 16

_HEX = set(string.hexdigits)


class SecretFileError(Exception):
    """The file exists but cannot be used; the message says why (no content)."""


def read_secret_file(path):
    """The secret held by ``path``. Raises FileNotFoundError or SecretFileError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise SecretFileError(f"cannot read {path}: {e.strerror or e.__class__.__name__}") from None
    text = data.strip()
    if text and len(text) % 2 == 0 and all(chr(b) in _HEX for b in text):
        secret = bytes.fromhex(text.decode("ascii"))
    else:
        secret = data  # raw bytes, as 3.x writes them
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretFileError(
            f"{path} holds {len(secret)} bytes, fewer than {MIN_SECRET_BYTES}: "
            "remove it and a new secret is made"
        )
    return secret
