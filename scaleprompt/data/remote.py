"""Remote shard folders: a shard folder on an object store, read through a ``pipe:`` command TEMPLATE.

A remote folder is named by the command that prints one of its files, with ``{}`` where the file name goes::

    pipe:aws s3 cp s3://bucket/fmnist-shards/{} -
    pipe:curl -sf https://host/fmnist-shards/{}
    pipe:gsutil cat gs://bucket/fmnist-shards/{}

Only the exact token ``{}`` names the file (every occurrence); a ``pipe:`` folder without ``{}`` is a
:class:`DataError`. ``manifest.json`` is fetched through the command (once per process: the run then checks every
shard against that one view of the folder) and validated like a local one, shard names included: a name must be a
plain file name ending in ``.tar`` (letters, digits, ``.``, ``_``, ``-``; see
:data:`~scaleprompt.data.manifest.SHARD_NAME`), so no name can carry a separator, a URL scheme or a shell character.

The file name is never spliced into the shell text. The command runs as ``sh -c SCRIPT sh NAME``: SCRIPT is the
template with each ``{}`` replaced by a reference to the argument ``$1``, written for the quoting it stands in, so
every form a user writes reads the right file::

    pipe:cat /data/{}          ->  cat /data/"$1"
    pipe:cat "/data/{}"        ->  cat "/data/${1}"
    pipe:cat '/data/{}'        ->  cat '/data/'"$1"''

A ``{}`` right after a backslash, or a template with an unclosed quote, is refused (:class:`DataError`). The URL
named in logs and errors shows the command with the name written in (``pipe:cat "/data/train-000000.tar"``).

A command that writes nothing for ``SCALEPROMPT_PIPE_TIMEOUT`` seconds (default 600; ``0``: wait without end) is
killed (its whole process group), and the read is a :class:`DataError` naming the command and the wait.

:class:`PipeStream` runs one command and reads its output. It replaces webdataset's ``pipe:`` opener, which checks
the exit status only when a read happens to find the command already ended, or when the stream is closed
explicitly; its tar reader never closes the stream, and ``Pipe.__del__`` swallows the error. So a command that
printed a whole shard and then failed can pass silently (it did in experiments with webdataset 1.0.2, depending on
timing), and a missing object is a bare "empty file" tar error (the command's stderr goes to the worker's stderr).
Here the exit status is checked at the end of every shard, after its output was read to the end, and a failure is
a :class:`DataError` naming the command, its exit status and the end of its stderr; a shard that cannot be parsed
reports its command's failure when there was one. The bytes are hashed (sha256) as they pass, so a remote shard is
compared with its manifest hash at its end without downloading it twice. ``WDS_SECURE=1`` (webdataset's switch
that refuses ``pipe:`` URLs) refuses these commands too.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence

from scaleprompt.data.manifest import MANIFEST, SHARD_NAME, DataError, parse_manifest

logger = logging.getLogger(__name__)

PIPE = "pipe:"
SLOT = "{}"
_STDERR_CHARS = 600  # the end of a failed command's stderr kept in its error
_EXIT_TIMEOUT = 60.0  # seconds a command may take to exit after its output ended
TIMEOUT_ENV = "SCALEPROMPT_PIPE_TIMEOUT"  # seconds a command may go without writing a byte (0: no limit)
DEFAULT_TIMEOUT = 600.0
_CHUNK = 1 << 20

# template -> its checked manifest: a remote folder's manifest is fetched once per process
_MANIFESTS: dict[str, dict] = {}


def is_pipe(source: object) -> bool:
    """``source`` is a ``pipe:`` string (a remote folder template, or a bare shard command)."""
    return isinstance(source, str) and source.startswith(PIPE)


def is_remote_folder(source: object) -> bool:
    """``source`` is a remote shard folder: a ``pipe:`` command with ``{}`` for the file name."""
    return is_pipe(source) and SLOT in str(source)


def check_template(template: str) -> None:
    """A :class:`DataError` unless ``template`` is a ``pipe:`` command with ``{}`` where the file name goes."""
    if not is_pipe(template) or not template[len(PIPE) :].strip():
        raise DataError(f"{template!r} is not a pipe: command")
    if SLOT not in template:
        raise DataError(
            f"remote shard folder {template!r} names no file: a pipe: shard folder is a command with {SLOT} where "
            f"the file name goes (e.g. pipe:aws s3 cp s3://bucket/folder/{SLOT} -)"
        )


def check_file_name(name: str, template: str) -> None:
    """A :class:`DataError` (naming the folder ``template``) unless ``name`` is ``manifest.json`` or a plain shard
    file name (:data:`SHARD_NAME`)."""
    if name != MANIFEST and not SHARD_NAME.fullmatch(name):
        raise DataError(
            f"refusing to read {name!r} from remote shard folder {template}: not a plain shard file name (letters, "
            "digits, '.', '_', '-', ending in .tar)"
        )


def template_script(template: str) -> str:
    """The shell script of ``template``: each ``{}`` replaced by a reference to the script's first argument, written
    for the quoting it stands in (unquoted: ``"$1"``, in double quotes: ``${1}``, in single quotes: ``'"$1"'``), so
    the file name is an argument, never shell text. A ``{}`` after a backslash or an unclosed quote is a
    :class:`DataError`."""
    check_template(template)
    body, out, i, quote = template[len(PIPE) :], [], 0, ""
    while i < len(body):
        if body.startswith(SLOT, i):
            out.append({"": '"$1"', '"': "${1}", "'": "'\"$1\"'"}[quote])
            i += len(SLOT)
            continue
        char = body[i]
        if char == "\\" and quote != "'":
            if body.startswith(SLOT, i + 1):
                raise DataError(
                    f"remote shard folder {template!r}: a backslash before {SLOT} makes it literal text; write {SLOT} "
                    "without a backslash"
                )
            out.append(body[i : i + 2])
            i += 2
            continue
        if char in "'\"" and quote in ("", char):
            quote = "" if quote else char
        out.append(char)
        i += 1
    if quote:
        raise DataError(f"remote shard folder {template!r} has an unclosed {quote} quote")
    return "".join(out)


def remote_url(template: str, name: str) -> str:
    """The ``pipe:`` URL of file ``name`` of the remote folder ``template``: the command with the name written in,
    as logs and errors show it (:func:`remote_command` is what runs)."""
    check_template(template)
    check_file_name(name, template)
    return template.replace(SLOT, name)


def remote_command(template: str, name: str) -> list[str]:
    """The argument vector that prints file ``name`` of the remote folder ``template``: ``sh -c SCRIPT sh NAME``
    (:func:`template_script`): the name is passed as an argument, whatever quotes the template puts around ``{}``."""
    check_file_name(name, template)
    return ["sh", "-c", template_script(template), "sh", name]


def open_remote(template: str, name: str) -> PipeStream:
    """A :class:`PipeStream` of file ``name`` of the remote folder ``template``."""
    return PipeStream(remote_url(template, name), remote_command(template, name))


def read_timeout() -> float | None:
    """Seconds a ``pipe:`` command may go without writing a byte (``SCALEPROMPT_PIPE_TIMEOUT``, default 600); None
    when set to 0 (no limit). A value that is not a number >= 0 is a :class:`DataError`."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise DataError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds >= 0 (0: no limit)")
    return value or None


def read_remote_manifest(template: str) -> dict:
    """The ``manifest.json`` of the remote folder ``template``, fetched through its command and checked like a local one (a copy of
    the one fetched first in this process)."""
    if template not in _MANIFESTS:
        url = remote_url(template, MANIFEST)
        raw = fetch(
            open_remote(template, MANIFEST), what=f"fetching the manifest of remote shard folder {template}"
        )
        _MANIFESTS[template] = parse_manifest(
            raw, url, remedy="write the folder again (scaleprompt shards) and upload it"
        )
        logger.info("remote shard folder %s: fetched and checked its manifest", template)
    return copy.deepcopy(_MANIFESTS[template])


def forget_remote_manifests() -> None:
    """Fetch remote manifests again on their next use (tests; a process that outlives a folder's rewrite)."""
    _MANIFESTS.clear()


def fetch(stream: PipeStream, what: str) -> bytes:
    """The whole output of the command of ``stream`` (a failing command is a DataError naming ``what``)."""
    try:
        data = stream.read()
        stream.check_exit(what)
    finally:
        stream.release()
    return data


class PipeStream:
    """The output of one ``pipe:`` command as a readable binary stream, hashed (sha256) as it is read.

    :meth:`finish` reads the rest of the output (hashing it), waits for the command and checks its exit status;
    :meth:`close` stops a command whose output was not read to its end. The command runs in its own process group
    (``sh -c``: a pipeline is stopped as a whole); its stderr goes to a temporary file, whose end a failure
    reports. ``argv``: the argument vector to run (a remote folder's file: :func:`remote_command`); without it the
    command of ``url`` (a bare ``pipe:`` shard URL the user wrote) runs as ``sh -c``. A command that writes nothing
    for :func:`read_timeout` seconds is killed and the read is a :class:`DataError`."""

    def __init__(self, url: str, argv: Sequence[str] | None = None) -> None:
        if not is_pipe(url):
            raise ValueError(f"not a pipe: URL: {url!r}")
        if os.environ.get("WDS_SECURE", "0").strip() not in ("", "0"):
            raise DataError(f"pipe: shard commands are disabled (WDS_SECURE is set): {url}")
        self.url, self.command = url, url[len(PIPE) :]
        self.timeout = read_timeout()
        self.digest = hashlib.sha256()
        self.size = 0
        self.eof = False
        self.stalled: str | None = None  # why the command was killed for writing nothing, if it was
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - open while the command runs; release() closes it
        try:
            self._proc = subprocess.Popen(
                list(argv) if argv is not None else self.command,
                shell=argv is None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                start_new_session=True,
                bufsize=0,
            )
        except OSError as exc:
            self._stderr.close()
            raise DataError(f"cannot run shard command {url}: {exc}") from exc

    def __repr__(self) -> str:  # (webdataset's tar reader puts the stream into its errors)
        return f"<{self.url}>"

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (fewer only at the end of the output; ``size`` < 0: all of it), each wait for the
        next byte bounded by the read timeout."""
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        parts: list[bytes] = []
        got = 0
        while size is None or size < 0 or got < size:
            self._wait_readable(fd)
            chunk = os.read(fd, _CHUNK if size is None or size < 0 else min(size - got, _CHUNK))
            if not chunk:
                self.eof = True
                break
            parts.append(chunk)
            got += len(chunk)
        data = b"".join(parts)
        self.digest.update(data)
        self.size += len(data)
        return data

    def _wait_readable(self, fd: int) -> None:
        """Wait until the command writes (or closes its output); past the read timeout it is killed and this is a
        DataError naming the command and the wait."""
        if self.timeout is None:
            return
        deadline = time.monotonic() + self.timeout
        poller = select.poll()  # (not select.select: it refuses descriptors >= 1024, common in a big run)
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if poller.poll(max(1, int(left * 1000))):  # (readable, or closed: either ends the wait)
                return
        self.stalled = (
            f"shard command {self.url} wrote nothing for {self.timeout:g} s ({self.size} bytes read before): killed "
            f"it (set {TIMEOUT_ENV} to wait longer, 0 to wait without end); stderr: {self.stderr_tail() or '(empty)'}"
        )
        self.close()
        raise DataError(self.stalled)

    def hexdigest(self) -> str:
        """The sha256 of the bytes read so far (all of them after :meth:`finish`)."""
        return self.digest.hexdigest()

    def finish(self, what: str = "shard command") -> str:
        """Read (and hash) the rest of the output, wait for the command, check its exit status; the sha256 of the
        whole output. (A tar reader stops at the end-of-archive blocks: the record padding after them is read
        here, so the hash covers every byte of the shard.) ``what``: the command, as named in an error."""
        while self.read(1 << 20):
            pass
        self.check_exit(what)
        return self.hexdigest()

    def check_exit(self, what: str = "shard command") -> None:
        """After the output was read to its end: the command must exit with status 0, else a DataError naming
        ``what``, the command, its status and its stderr."""
        status = self.status()
        if status != 0:
            raise DataError(self.failure(status, what))

    def status(self) -> int | None:
        """The command's exit status if it ended by itself: it closed its output (read to the end here), or it had
        already exited when asked. None if it was still running: it is then stopped (its output was abandoned)."""
        proc = self._proc
        if proc.returncode is not None:
            return proc.returncode
        if not self.eof and proc.poll() is None:
            self.close()
            return None
        try:
            return proc.wait(timeout=_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.close()
            raise DataError(
                f"shard command {self.url} did not exit within {_EXIT_TIMEOUT:.0f} s after its output ended"
            ) from None

    def failure(self, status: int | None, what: str = "shard command") -> str:
        """One line: ``what`` failed, the command, its exit status ``status`` and the end of its stderr (or why it
        was killed)."""
        if self.stalled is not None:
            return self.stalled
        how = f"killed by signal {-status}" if status is not None and status < 0 else f"exit {status}"
        return f"{what} failed ({how}): {self.url}; stderr: {self.stderr_tail() or '(empty)'}"

    def stderr_tail(self) -> str:
        """The end of the command's stderr, on one line."""
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - 4 * _STDERR_CHARS))
            text = self._stderr.read().decode(errors="replace")
        except (OSError, ValueError):  # (closed)
            return ""
        text = " / ".join(line.strip() for line in text.splitlines() if line.strip())
        return text if len(text) <= _STDERR_CHARS else "..." + text[-_STDERR_CHARS:]

    def close(self) -> None:
        """Stop the command if it is still running (its whole process group) and release the pipe."""
        proc = self._proc
        if proc.returncode is None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait()
        if proc.stdout is not None and not proc.stdout.closed:
            proc.stdout.close()

    def release(self) -> None:
        """:meth:`close`, then drop the stderr file (after any failure was reported)."""
        self.close()
        self._stderr.close()


def verify_remote_shards(template: str) -> list[str]:
    """Names of the shards of the remote folder ``template`` whose command fails or whose streamed sha256 differs from the manifest
    (downloads every shard once)."""
    manifest = read_remote_manifest(template)
    bad = []
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            stream = open_remote(template, entry["name"])
            try:
                if stream.finish() != entry["sha256"]:
                    bad.append(entry["name"])
            except DataError as exc:
                logger.warning("%s", exc)
                bad.append(entry["name"])
            finally:
                stream.release()
    return bad
