"""Pulling content into a home before a server starts: the shell script that
a short-lived container (Docker) or an init container (Kubernetes) runs, as
the image's user, with the home mounted.

The repository is cloned into ``<home>/<dir>`` or, when it is there already,
updated the way nbgitpuller does it, so that the user loses nothing:

- files the user deleted come back (from the commit they have);
- a file of theirs that upstream now adds is renamed out of the way
  (``name_<time>.ext``);
- their changes are committed locally (never pushed: nothing leaves the
  home) and upstream is merged with ``-Xours``: where both changed the same
  lines, the user's version stays; a file the user changed and upstream
  deleted stays too;
- new upstream files arrive.

The repository, ref and folder come in the environment (``CONTENT_REPO``,
``CONTENT_REF``, ``CONTENT_DIR``, already checked by service/content.py),
never in the script's text.
"""

#: The script (POSIX sh, git). Exit status 0: pulled; else the last line of
#: its output says why.
SCRIPT = r"""
set -u
export HOME=/tmp GIT_TERMINAL_PROMPT=0 GIT_ASKPASS=/bin/false
git() {
  command git -c user.name=tljh-repo2docker -c user.email=content@tljh-repo2docker.invalid \
    -c safe.directory='*' -c advice.detachedHead=false "$@"
}
fail() { echo "$*" >&2; exit 1; }
dest="$CONTENT_HOME/$CONTENT_DIR"

if [ ! -d "$dest/.git" ]; then
  if [ -e "$dest" ] && [ -n "$(ls -A "$dest" 2>/dev/null)" ]; then
    fail "~/$CONTENT_DIR exists and is not a git repository: left as it is"
  fi
  git clone --quiet -- "$CONTENT_REPO" "$dest" || fail "git clone failed"
  cd "$dest" || fail "cannot enter ~/$CONTENT_DIR"
  if [ -n "$CONTENT_REF" ]; then
    if git rev-parse -q --verify "refs/remotes/origin/$CONTENT_REF" >/dev/null; then
      git checkout --quiet -B "$CONTENT_REF" "origin/$CONTENT_REF" || fail "cannot check out $CONTENT_REF"
    else
      git checkout --quiet --detach "$CONTENT_REF" || fail "no ref $CONTENT_REF in the repository"
    fi
  fi
  echo "cloned into ~/$CONTENT_DIR"
  exit 0
fi

cd "$dest" || fail "cannot enter ~/$CONTENT_DIR"
git fetch --quiet --tags origin || fail "git fetch failed"
if [ -z "$CONTENT_REF" ]; then
  git remote set-head origin --auto >/dev/null 2>&1
  target=$(git rev-parse -q --verify "refs/remotes/origin/HEAD^{commit}")
elif git rev-parse -q --verify "refs/remotes/origin/$CONTENT_REF" >/dev/null; then
  target=$(git rev-parse -q --verify "refs/remotes/origin/$CONTENT_REF^{commit}")
else
  target=$(git rev-parse -q --verify "$CONTENT_REF^{commit}")
fi
[ -n "$target" ] || fail "no ref ${CONTENT_REF:-HEAD} in the repository"
if ! git rev-parse -q --verify HEAD >/dev/null; then
  git checkout --quiet --detach "$target" || fail "cannot check out $target"
  exit 0
fi

# files the user deleted come back
git ls-files --deleted | while IFS= read -r file; do
  git checkout --quiet -- "$file"
done

# files of the user's that upstream now adds are moved out of the way
stamp=$(date +%Y%m%d%H%M%S)
git diff --name-only --diff-filter=A HEAD "$target" | while IFS= read -r file; do
  if [ -e "$file" ] && ! git ls-files --error-unmatch -- "$file" >/dev/null 2>&1; then
    base=${file##*/}
    case "$base" in
      ?*.*) moved="${file%.*}_$stamp.${base##*.}" ;;
      *) moved="${file}_$stamp" ;;
    esac
    mv -- "$file" "$moved" && echo "moved ~/$CONTENT_DIR/$file to $moved: upstream adds it"
  fi
done

# the user's changes, committed here only (nothing is ever pushed)
if ! git diff --quiet HEAD --; then
  git commit --quiet -a -m "Changes made in the server" || fail "cannot keep the changes made in the server"
fi
if ! git merge --quiet -Xours --no-edit "$target" >/dev/null 2>&1; then
  # modify/delete: keep the user's file
  if ! git commit --quiet -a --no-edit >/dev/null 2>&1; then
    git merge --abort >/dev/null 2>&1
    fail "the changes in the repository could not be merged with the changes made in the server"
  fi
fi
echo "updated ~/$CONTENT_DIR"
"""


def environment(content, home_path):
    """The script's environment for ``content`` (user_options["content"])."""
    return {
        "CONTENT_REPO": content["repo"],
        "CONTENT_REF": content.get("ref") or "",
        "CONTENT_DIR": content["dir"],
        "CONTENT_HOME": home_path,
    }


#: ``$0`` of the wrapper below (the name ``sh`` gives it in its messages).
PROCESS_NAME = "tljh-r2d-content"
#: GNU timeout's statuses: the command was stopped (TERM), or killed after
#: the grace period (``-k``) because TERM did not stop it.
_TIMED_OUT = (124, 137)
#: Seconds between TERM and KILL when the pull overruns.
KILL_AFTER = 5


def _run_line(timeout):
    """The wrapper's line that runs the script (``$1``), within ``timeout``
    seconds when one is given (GNU coreutils' ``timeout``: it stops git's
    processes with the script's, as they share its process group)."""
    if not timeout:
        return 'sh -c "$1" "$0"'
    return (
        "if ! command -v timeout >/dev/null 2>&1; then\n"
        '  echo "the puller image has no timeout command (coreutils): not pulled" >&2; exit 1\n'
        "fi\n"
        f'timeout -k {KILL_AFTER} {timeout} sh -c "$1" "$0"'
    )


def command(never_fail=False, timeout=None):
    """The command that runs the script: ``sh -c WRAPPER tljh-r2d-content
    SCRIPT``, the script being the wrapper's ``$1`` (never quoted into it).
    The repository stays in the environment (:func:`environment`), never
    in the command, which anyone listing processes or pods can read.

    ``timeout``: seconds the pull may take (``content_pull_timeout``); then it
    is stopped and the last line says "the pull took longer than N seconds:
    stopped". With ``never_fail`` (an init container, which would hold the
    pod back) it always exits 0, having said why it did not pull."""
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0):
        raise ValueError(f"content_pull_timeout: a whole number of seconds >= 0, not {timeout!r}")
    wrapper = f"status=0\n{_run_line(timeout)} || status=$?\n"
    if timeout:
        wrapper += (
            f"if [ $status -eq {_TIMED_OUT[0]} ] || [ $status -eq {_TIMED_OUT[1]} ]; then\n"
            f'  echo "the pull took longer than {timeout} seconds: stopped" >&2\n'
            "fi\n"
        )
    wrapper += "exit $status\n"
    if never_fail:
        wrapper = (
            f"( {wrapper}) 2>&1 | tail -n 20\n"
            # the pipeline's status is tail's: the outcome is the last line
            "exit 0\n"
        )
    return ["sh", "-c", wrapper, PROCESS_NAME, SCRIPT]
