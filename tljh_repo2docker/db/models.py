"""Tables. Queries live in store.py; nothing else here."""

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow():
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """``DateTime(timezone=True)`` that stores UTC and always gives back aware UTC.

    SQLite and MySQL/MariaDB keep no time zone: an aware value is stored as
    its wall-clock time, so a non-UTC one would come back shifted, and values
    come back naive. Convert to UTC on the way in, mark UTC on the way out.
    Naive values passed in are taken as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
            if dialect.name != "postgresql":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


#: A git commit, or an image's id (``sha256:<64 hex>``) for an environment
#: from an image. SQLite does not enforce lengths, and widening a column there
#: recreates its table (and would drop the versions with the environments):
#: the 0007 migration widens it on the other databases only.
COMMIT = String(128).with_variant(String(64), "sqlite")


class Base(DeclarativeBase):
    pass


class Environment(Base):
    """One environment: a repository at a ref, built into an image."""

    __tablename__ = "environments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    image_name: Mapped[str] = mapped_column(String(512))
    image_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    repo: Mapped[str] = mapped_column(String(2048))
    ref: Mapped[str] = mapped_column(String(255))
    provider: Mapped[str] = mapped_column(String(32), default="git")
    status: Mapped[str] = mapped_column(String(16), index=True)
    memory: Mapped[str | None] = mapped_column(String(32), nullable=True)
    cpu: Mapped[float | None] = mapped_column(Float, nullable=True)
    machine_profile: Mapped[str | None] = mapped_column(String(255), nullable=True)
    node_selector: Mapped[dict] = mapped_column(JSON, default=dict)
    build_args: Mapped[dict] = mapped_column(JSON, default=dict)
    # Whether the repository needs credentials. The credentials themselves are
    # never stored: a queued private build cannot resume after a restart.
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    owner: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    # Who may use it besides its owner and admins: {"everyone": bool,
    # "users": [...], "groups": [...]} (see access.py). NULL: everyone.
    sharing: Mapped[dict | None] = mapped_column(
        JSON, nullable=True, default=lambda: {"everyone": True, "users": [], "groups": []}
    )
    commit: Mapped[str | None] = mapped_column(COMMIT, nullable=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    queued: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Number of the current build (1 for the first, +1 per rebuild).
    build_number: Mapped[int] = mapped_column(Integer, default=0)
    # Lines of the build container's output already stored: where to resume
    # reading after the service restarts and re-attaches to a running build.
    source_lines: Mapped[int] = mapped_column(Integer, default=0)
    # Where the stored log ends in the backend's output (the cursor of the
    # last stored log line, opaque; for Docker a log time stamp and a count):
    # what a re-attach resumes from. Written in the same transaction as the
    # lines. None for builds recorded by versions without it (source_lines).
    source_cursor: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Last log event id handed out; ids only grow, across rebuilds too, so an
    # SSE client's Last-Event-ID stays meaningful.
    last_event_id: Mapped[int] = mapped_column(Integer, default=0)
    # Who asked for the current build, and why ("request", "poll", "webhook"):
    # copied into the Version it makes.
    requested_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    build_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Rebuild when the repository's ref moves (see refwatch.py / webhooks.py).
    auto_rebuild: Mapped[bool] = mapped_column(Boolean, default=False)
    # The commit the ref was last seen at by `git ls-remote`, when and why
    # not (the error of the last check, None when it worked).
    remote_commit: Mapped[str | None] = mapped_column(COMMIT, nullable=True)
    remote_checked: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    remote_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The push webhook's secret, hashed (sha256 hex); None: no webhook.
    webhook_secret_hash: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # The owner's own check, run in each new image after the built-in one
    # (None: none); the builder image the environment names (None: the
    # default builder); "any" push rebuilds, or only those that change
    # what repo2docker reads ("environment").
    check_command: Mapped[str | None] = mapped_column(Text, nullable=True)
    builder_image: Mapped[str | None] = mapped_column(String(512), nullable=True)
    rebuild_on: Mapped[str] = mapped_column(String(16), default="any", server_default="any")
    # Where it comes from: "git" (repo at ref), "files" (the files below,
    # kept here and handed to the builder with no network fetch) or "image"
    # (an existing image, its reference in ``repo``).
    source: Mapped[str] = mapped_column(String(16), default="git", server_default="git")
    # For "files": {relative path: text}, what the next build builds.
    files: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class LogLine(Base):
    """One event of an environment's build log (the current build's)."""

    __tablename__ = "log_lines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    __table_args__ = (Index("ix_log_lines_environment_event", "environment_id", "event_id"),)

    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)


class Version(Base):
    """One successful build of an environment: an image that servers can start from.

    The environment's current version is the one whose ``image_id`` it holds
    (``Environment.image_id``). A version's row goes once its image is removed
    (``keep_versions``, prune, deleting the environment).
    """

    __tablename__ = "versions"
    __table_args__ = (Index("ix_versions_environment_number", "environment_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id", ondelete="CASCADE"))
    # The build number that made it (Environment.build_number at the time).
    number: Mapped[int] = mapped_column(Integer)
    # The version's own image reference: kept when the environment's tag moves
    # on (Docker: a per-version tag; BinderHub: the name it returned).
    image_name: Mapped[str] = mapped_column(String(512))
    image_id: Mapped[str] = mapped_column(String(128))
    commit: Mapped[str | None] = mapped_column(COMMIT, nullable=True)
    built_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Seconds from the start of the build to its result.
    duration: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Who asked for the build (None: the service itself, e.g. an auto-rebuild).
    built_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Why it was built: "request", "poll", "webhook", "adopted".
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The check made before it could go live: {"status": "passed" | "failed"
    # | "skipped", "message": ...}; None for versions made before checks.
    check: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # What is inside: {"build_pack", "python", "r", "repo2docker"}; and its
    # packages: [{"name", "version", "manager"}]. None: not known.
    inside: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    packages: Mapped[list | None] = mapped_column(JSON, nullable=True)
    # The builder (repo2docker image) that made it, by name and id.
    builder_image: Mapped[str | None] = mapped_column(String(512), nullable=True)
    builder_image_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # For an environment from files: the files this version was built from
    # (what a rollback shows and a rebuild of this version builds again).
    files: Mapped[dict | None] = mapped_column(JSON, nullable=True)
