"""Checking what an admin or a builder asks for when adding an environment.

Turns an API request body into clean fields, or raises FieldError naming
the field. Nothing is stored here. What a built environment turns into
(its image labels, the user_options that start it) is in contract.py.
"""

import re
from urllib.parse import urlsplit

from ..errors import FieldError
from ..limits import parse_cpu, parse_memory, parse_node_selector_choice
from .rebuild_rules import ANY, REBUILD_ON

_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s]+$")
_BUILD_ARG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BAD_REF = re.compile(r"[\s~^:?*\[\\\x00-\x1f\x7f]|\.\.|@\{|^[-/.]|[/.]$|\.lock$|//")
REMOTE_SCHEMES = {"http", "https", "git", "ssh"}
MAX_NAME = 100
#: The longest check command (characters).
MAX_CHECK_COMMAND = 1000
#: What parse_trust_fields reads (POST and PATCH).
TRUST_FIELDS = ("check_command", "builder_image", "rebuild_on")
BINDERHUB_BUILDER = (
    "BinderHub chooses its own builder (repo2docker image): this backend cannot pin one"
)
BINDERHUB_CHECK = "the BinderHub backend does not run check commands on its images"


def text_field(body, field, required=False, default=None, limit=2048):
    """``body[field]``, a string stripped of surrounding space, or
    ``default`` when absent or blank; FieldError naming ``field`` for
    another type, one longer than ``limit``, or a missing required one."""
    value = body.get(field, default)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise FieldError(field, "is required")
        return default
    if not isinstance(value, str):
        raise FieldError(field, "must be a string")
    value = value.strip()
    if len(value) > limit:
        raise FieldError(field, f"is longer than {limit} characters")
    return value


def check_repo(repo, allow_local=False):
    if _CONTROL.search(repo) or " " in repo:
        raise FieldError("repo", "must not contain spaces or control characters")
    if _SCP_LIKE.match(repo):
        return repo  # git@host:owner/repo.git, an ssh URL without a scheme
    parts = urlsplit(repo)
    if parts.scheme in REMOTE_SCHEMES:
        if not parts.hostname:
            raise FieldError("repo", f"{repo!r} has no host name")
        if parts.password is not None or (parts.username and parts.scheme in {"http", "https"}):
            raise FieldError(
                "repo",
                "must not contain credentials: give them as username and password instead",
            )
        return repo
    if parts.scheme in {"", "file"} and allow_local:
        path = parts.path if parts.scheme == "file" else repo
        if not path.startswith("/"):
            raise FieldError("repo", "a local repository must be an absolute path")
        return repo
    if parts.scheme in {"", "file"}:
        raise FieldError(
            "repo", f"{repo!r} is not a repository URL (use https://, http://, git:// or ssh://)"
        )
    raise FieldError(
        "repo", f"the scheme {parts.scheme!r} is not supported (use https, http, git or ssh)"
    )


def check_ref(ref):
    if _BAD_REF.search(ref):
        raise FieldError("ref", f"{ref!r} is not a valid git reference")
    return ref


def name_from_repo(repo):
    path = repo.rsplit(":", 1)[-1] if _SCP_LIKE.match(repo) else urlsplit(repo).path
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if last.endswith(".git"):
        last = last[:-4]
    return last


def slug(text):
    """A Docker repository name component: lowercase letters, digits and single separators."""
    text = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return text[:64].strip("-")


def image_tag(ref):
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", ref).strip("-.")
    return tag[:128] or "latest"


def check_name(name):
    if _CONTROL.search(name):
        raise FieldError("name", "must not contain control characters")
    if len(name) > MAX_NAME:
        raise FieldError("name", f"is longer than {MAX_NAME} characters")
    if not slug(name):
        raise FieldError(
            "name", f"{name!r} cannot become an image name: use letters or digits"
        )
    return name


def parse_build_args(value):
    if value is None or value == "" or value == {}:
        return {}
    if isinstance(value, str):
        pairs = {}
        for number, line in enumerate(value.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, val = line.partition("=")
            if not sep:
                raise FieldError("buildargs", f"line {number} is not KEY=VALUE")
            pairs[key.strip()] = val
        value = pairs
    if not isinstance(value, dict):
        raise FieldError("buildargs", 'must be {"KEY": "VALUE"} or lines of KEY=VALUE')
    result = {}
    for key, val in value.items():
        if not isinstance(key, str) or not _BUILD_ARG_KEY.match(key):
            raise FieldError("buildargs", f"{key!r} is not a valid build argument name")
        if not isinstance(val, (str, int, float)) or isinstance(val, bool):
            raise FieldError("buildargs", f"the value of {key} must be a string")
        val = str(val)
        if _CONTROL.search(val):
            raise FieldError("buildargs", f"the value of {key} contains control characters")
        result[key] = val
    return result


def parse_credentials(body):
    """``(username, password)`` of a private repository from a request body, or Nones."""
    username = text_field(body, "username", limit=255)
    password = body.get("password") or None
    if password is not None and not isinstance(password, str):
        raise FieldError("password", "must be a string")
    if password and not username:
        username = "git"  # token-only hosts accept any user name with a token
    return username, password


PRIVATE_AUTO_REBUILD = (
    "a private repository cannot be rebuilt by the service on its own: its credentials "
    "are never stored"
)


def parse_auto_rebuild(body, private=False):
    """The ``auto_rebuild`` of a request body (False when left out)."""
    value = body.get("auto_rebuild", False)
    if value is None:
        value = False
    if not isinstance(value, bool):
        raise FieldError("auto_rebuild", "must be true or false")
    if value and private:
        raise FieldError("auto_rebuild", PRIVATE_AUTO_REBUILD)
    return value


def builder_choices(allowed, builder):
    """The builders (repo2docker images) an environment may name: the
    backend's default first, then ``allowed`` (the service's
    ``allowed_repo2docker_images``); empty when the backend chooses its own
    (BinderHub)."""
    default = getattr(builder, "repo2docker_image", None)
    if not default:
        return []
    return [default] + [image for image in allowed if image != default]


def parse_check_command(value, builder):
    """An environment's own check command: a shell command line run in each
    new image, or None (null or empty removes it)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise FieldError("check_command", "must be a string (a shell command line)")
    value = value.strip()
    if len(value) > MAX_CHECK_COMMAND:
        raise FieldError("check_command", f"is longer than {MAX_CHECK_COMMAND} characters")
    if _CONTROL.search(value):
        raise FieldError(
            "check_command", "must be one line, without control characters (newlines, tabs, …)"
        )
    if not getattr(builder, "repo2docker_image", None):
        raise FieldError("check_command", BINDERHUB_CHECK)
    return value


def parse_builder_image(value, choices):
    """The builder an environment names, from ``choices`` (builder_choices);
    None for the default builder (null, empty, or the default itself)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise FieldError("builder_image", "must be a string: one of the allowed builder images")
    value = value.strip()
    if not choices:
        raise FieldError("builder_image", BINDERHUB_BUILDER)
    if value == choices[0]:
        return None  # the default builder: follows the service's setting
    if value not in choices:
        raise FieldError(
            "builder_image",
            f"{value[:200]!r} is not an allowed builder; allowed: {', '.join(choices)}",
        )
    return value


def parse_rebuild_on(value):
    """What pushes rebuild an environment: ``"any"`` (default) or ``"environment"``."""
    if value is None:
        return ANY
    if not isinstance(value, str) or value not in REBUILD_ON:
        raise FieldError("rebuild_on", f"must be one of: {', '.join(REBUILD_ON)}")
    return value


def parse_trust_fields(body, app, builder, *, defaults):
    """``check_command``, ``builder_image`` and ``rebuild_on`` of a POST
    (``defaults=True``: every field, absent ones as their default) or PATCH
    (only those given) body."""
    parsers = {
        "check_command": lambda v: parse_check_command(v, builder),
        "builder_image": lambda v: parse_builder_image(
            v, builder_choices(app.allowed_repo2docker_images, builder)
        ),
        "rebuild_on": parse_rebuild_on,
    }
    return {
        field: parse(body.get(field))
        for field, parse in parsers.items()
        if defaults or field in body
    }


#: The fields that say where an environment comes from: exactly one is given.
SOURCE_FIELDS = ("repo", "files", "archive", "image")
#: The source each of them makes.
SOURCE_OF = {"repo": "git", "files": "files", "archive": "files", "image": "image"}


def source_field(body):
    """Which of ``repo``, ``files``, ``archive`` and ``image`` a body gives
    (exactly one, else FieldError: none names ``repo``, two the second)."""
    given = [
        field for field in SOURCE_FIELDS
        if body.get(field) is not None and body.get(field) != ""
    ]
    if not given:
        raise FieldError("repo", "is required: give one of: repo, files, archive or image")
    if len(given) > 1:
        raise FieldError(
            given[1], f"give only one of: repo, files, archive or image ({given[0]} is given)"
        )
    return given[0]


def parse_files_source(body, app, field):
    """The files of a body's ``files`` or ``archive`` (service/files_source.py)."""
    from . import files_source

    limits = {"max_count": app.max_files_count, "max_size": app.max_files_size}
    if field == "archive":
        return files_source.unpack_archive(
            body["archive"], max_archive_size=app.max_archive_size, **limits
        )
    return files_source.check_files(body["files"], **limits)


def _refuse_with(body, source, fields):
    """FieldError naming the first of ``fields`` given in ``body``, which
    make no sense for ``source``."""
    for field in fields:
        value = body.get(field)
        if value is not None and value != "" and value != {}:
            raise FieldError(field, f"cannot be given for an environment from {source}")


def _name_from_files(files):
    """A name for an environment from files when none is given: its one
    file's name, else "files"."""
    if len(files) == 1:
        return slug(next(iter(files)).rsplit("/", 1)[-1]) or "files"
    return "files"


def _common_fields(body, app, builder, name, *, private):
    """The fields of a POST body that every source has: limits, build
    arguments, auto_rebuild and the trust fields."""
    profile_label = text_field(body, "machine_profile", limit=255)
    memory = parse_memory(body.get("memory"))
    cpu = parse_cpu(body.get("cpu"))
    if profile_label:
        profiles = {p["label"]: p for p in app.machine_profiles}
        if profile_label not in profiles:
            allowed = ", ".join(profiles) or "no profiles are configured"
            raise FieldError(
                "machine_profile", f"{profile_label!r} is not one of: {allowed}"
            )
        if memory is not None or cpu is not None:
            raise FieldError("machine_profile", "give either a machine profile or memory/cpu")
        memory = profiles[profile_label]["memory"]
        cpu = profiles[profile_label]["cpu"]
    node_selector = parse_node_selector_choice(body.get("node_selector"), app.node_selector)
    if memory is None:
        memory = app.default_memory_limit or None
    if cpu is None:
        cpu = app.default_cpu_limit or None

    build_args = parse_build_args(body.get("buildargs", body.get("build_args")))
    if build_args and not builder.supports_build_args:
        raise FieldError("buildargs", "build arguments are not supported with BinderHub builds")
    auto_rebuild = parse_auto_rebuild(body, private=private)
    if auto_rebuild and "files" in body or auto_rebuild and "archive" in body:
        raise FieldError(
            "auto_rebuild",
            "an environment from files has no repository to watch: change its files instead",
        )
    return {
        "name": name,
        "memory": memory,
        "cpu": cpu,
        "machine_profile": profile_label,
        "node_selector": node_selector,
        "build_args": build_args,
        "private": private,
        "auto_rebuild": auto_rebuild,
        **parse_trust_fields(body, app, builder, defaults=True),
    }


def parse_request(body, app, builder):
    """Check a POST api/environments body. Returns (fields, credentials).

    The environment comes from exactly one of ``repo`` (git, at ``ref``),
    ``files`` (``{path: text}``), ``archive`` (base64 of a .zip or .tar.gz,
    unpacked into files) or ``image`` (an existing image's reference,
    service/image_source.py).
    """
    known = {
        "repo", "ref", "name", "memory", "cpu", "machine_profile", "node_selector",
        "buildargs", "build_args", "username", "password", "provider", "auto_rebuild",
        "sharing",  # checked by access.parse_sharing
        "files", "archive", "image",
        *TRUST_FIELDS,
    }
    unknown = sorted(set(body) - known)
    if unknown:
        raise FieldError(unknown[0], "is not a known field")
    field = source_field(body)
    source = SOURCE_OF[field]
    if source not in getattr(builder, "sources", ("git",)):
        raise FieldError(
            field,
            f"{getattr(builder, 'display_name', 'this build backend')} cannot build "
            f"environments from {'an image' if source == 'image' else source}: give a repo",
        )
    if source != "git":
        if source == "files":
            _refuse_with(body, "files", ["ref", "username", "password"])
            files = parse_files_source(body, app, field)
            specific = {"source": "files", "repo": "", "ref": "", "files": files}
            default_name = _name_from_files(files)
        else:
            # Imported here: service/image_source.py refuses what cannot
            # apply to an image (ref, credentials, build arguments).
            from . import image_source

            specific = dict(image_source.parse(body, app, builder))
            default_name = image_source.default_name(specific["repo"]) or "image"
        name = text_field(body, "name", limit=MAX_NAME * 4) or default_name
        check_name(name)
        fields = {
            **_common_fields(body, app, builder, name, private=False),
            "provider": "git",
            **specific,
            "image_name": f"{app.image_prefix}{slug(name)}:latest",
        }
        return fields, (None, None)
    provider = text_field(body, "provider", default=app.default_provider, limit=32)
    if provider not in app.provider_choices:
        raise FieldError(
            "provider", f"{provider!r} is not one of: {', '.join(app.provider_choices)}"
        )
    repo = text_field(body, "repo", required=True)
    if provider == "git" or "://" in repo:
        repo = check_repo(repo, allow_local=app.allow_local_repos)
    elif _CONTROL.search(repo) or " " in repo or repo.startswith("-"):
        # BinderHub's other providers take short specs (gh: owner/repo, zenodo: a DOI)
        raise FieldError("repo", "must not contain spaces or control characters")
    ref = check_ref(text_field(body, "ref", default="HEAD", limit=255))
    name = text_field(body, "name", limit=MAX_NAME * 4) or name_from_repo(repo)
    check_name(name)

    username, password = parse_credentials(body)
    if (username or password) and not builder.supports_credentials:
        raise FieldError(
            "username", "credentials are not supported with BinderHub builds"
        )
    private = bool(username or password)
    fields = {
        **_common_fields(body, app, builder, name, private=private),
        "repo": repo,
        "ref": ref,
        "provider": provider,
        "private": private,
        "image_name": f"{app.image_prefix}{slug(name)}:{image_tag(ref)}",
    }
    return fields, (username, password)
