"""Landing-zone files: discovery, batch dates, formats, content hashes and text encodings (SPEC §2)."""

from __future__ import annotations

import codecs
import datetime as dt
import gzip
import hashlib
import json
import os
import re
import stat
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from orchestration.contract import BATCH_DATE_HELP, SOURCES, SUPPORTED_SUFFIXES

CHUNK = 4 * 1024 * 1024
_DT_FOLDER = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
_DATE_IN_NAME = re.compile(r"(?<!\d)(\d{8})(?!\d)")
_WHITESPACE = b" \t\r\n\x0b\x0c"
UTF8_BOM = codecs.BOM_UTF8


class FileRejected(Exception):
    """The file cannot be loaded as a whole; the message names the file and the reason."""


@dataclass(frozen=True)
class LandingFile:
    path: Path  # absolute
    rel_path: str  # relative to settings.landing_dir, posix
    suffix: str | None  # the matched entry of SUPPORTED_SUFFIXES, None when unsupported
    format: str | None  # csv / parquet / jsonl
    compression: str  # gzip / none
    batch_date: dt.date | None
    batch_date_error: str | None

    @property
    def shown(self) -> str:
        """The relative path as messages print it (shown())."""
        return shown(self.rel_path)

    @property
    def sort_key(self) -> tuple:
        return (self.batch_date or dt.date.max, self.rel_path)


def shown(rel_path: str) -> str:
    """A landing path as messages and the summary print it: as it is, or quoted with escapes (JSON's, which keeps
    Chinese as it is) when it starts or ends with white space or holds a character that does not print (a
    newline, a tab, a format character such as U+202E, which shows the rest of a name reversed). Printed bare,
    `orders/a.csv ` and `orders/a.csv` read the same, and a name with a newline broke a log line in two (the
    filesystem review). The quoted form is a JSON string: `privdom unload` takes it back."""
    if rel_path.isprintable() and not any(part != part.strip() for part in rel_path.split("/")):
        return rel_path
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else json.dumps(c)[1:-1] for c in rel_path) + '"'


def match_suffix(name: str) -> str | None:
    lower = name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return suffix
    return None


# The years a batch date in a file name can have (timestamps before 1990 are refused by the contract): another
# 8-digit number in the name, a store or an order code, is not a date
FIRST_YEAR, LAST_YEAR = 1990, 2199


def batch_date_of(rel_path: str) -> tuple[dt.date | None, str | None]:
    """Batch date from a ``dt=YYYY-MM-DD`` folder (preferred) or a ``YYYYMMDD`` in the file name."""
    parts = rel_path.split("/")
    for folder in parts[:-1]:
        m = _DT_FOLDER.match(folder)
        if m:
            try:
                day = dt.date.fromisoformat(m.group(1))
            except ValueError:
                return None, f"folder {folder!r} is not a real date"
            if not FIRST_YEAR <= day.year <= LAST_YEAR:  # as in a file name: dt=9999-12-31 let year-9999 rows load
                return None, f"folder {folder!r} is not a batch date from {FIRST_YEAR} to {LAST_YEAR}"
            return day, None
    bad, dates, outside = [], [], []
    for m in _DATE_IN_NAME.finditer(parts[-1]):
        text = m.group(1)
        try:
            day = dt.datetime.strptime(text, "%Y%m%d").date()
        except ValueError:
            bad.append(text)
            continue
        if FIRST_YEAR <= day.year <= LAST_YEAR:  # a store code like 10010101 is no second date
            dates.append(day)
        else:
            outside.append(text)
    distinct = sorted(set(dates))
    if len(distinct) > 1:
        # a range (orders_20240101_20240131.csv, common in back-office exports): its first date made most of its
        # rows "after the batch" and quarantined them (time review); which date is meant is not for us to guess
        return None, (f"the file name holds {len(distinct)} dates ({', '.join(d.strftime('%Y%m%d') for d in distinct)}), "
                      "so its batch date is ambiguous; a file covering several days is named with its last day")
    if distinct:
        return distinct[0], None
    if bad:
        return None, f"{', '.join(bad)} in the file name is not a real date"
    if outside:  # orders_22000101.csv said only "no batch date" (calendar review)
        return None, f"{', '.join(outside)} in the file name is no batch date from {FIRST_YEAR} to {LAST_YEAR}"
    return None, None


# Names that uploaders, Excel and Windows write beside deliveries: a transfer in progress (WinSCP's .filepart,
# a browser's .crdownload, .part, .partial, .tmp), an Excel lock file, folder metadata. Each was rejected as an
# unsupported file type (a transfer in progress again on every run its size changed), and files_readable warned.
_LEFT_BESIDE = re.compile(r"(?i)(~\$.*|thumbs\.db|desktop\.ini|.*\.(part|partial|filepart|crdownload|tmp))")


def is_delivery(parts: tuple[str, ...]) -> bool:
    """Whether a path under a landing folder (its parts) can be a delivery: no part hidden or starting with `_`
    (`.DS_Store`, `_SUCCESS` markers, `_tmp/`), and a name that is no upload's, Excel's or Windows' own file
    (_LEFT_BESIDE)."""
    return not any(part.startswith((".", "_")) for part in parts) and not _LEFT_BESIDE.fullmatch(parts[-1])


def discover(landing_dir: Path, source: str) -> list[LandingFile]:
    """The files of listing()."""
    return listing(landing_dir, source)[0]


def listing(landing_dir: Path, source: str) -> tuple[list[LandingFile], list[str]]:
    """(every file under landing/<source>/ (recursively), in (batch date, relative path) order; the entries there
    named like deliveries that are no regular file to read, each as "<relative path> (why)", sorted), from one walk.

    Hidden files and files starting with ``_`` (``.DS_Store``, ``_SUCCESS`` markers) are not deliveries and are
    not listed, nor are the files uploaders, Excel and Windows leave (_LEFT_BESIDE).
    """
    root = landing_dir / source
    if not root.is_dir():
        return [], []
    found, skipped = _walk(root)
    out = []
    for p in found:
        rel = p.relative_to(landing_dir).as_posix()
        suffix = match_suffix(p.name)
        bd, bd_err = batch_date_of(rel)
        out.append(
            LandingFile(
                path=p,
                rel_path=rel,
                suffix=suffix,
                format=SUPPORTED_SUFFIXES.get(suffix) if suffix else None,
                compression="gzip" if suffix and suffix.endswith(".gz") else "none",
                batch_date=bd,
                batch_date_error=bd_err,
            )
        )
    return sorted(out, key=lambda f: f.sort_key), sorted(f"{shown(p.relative_to(landing_dir).as_posix())} ({why})" for p, why in skipped)


def _walk(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(the regular files under `root` that can be deliveries, a link to one included; the entries named like
    deliveries that are not listed, each with why). Hidden and `_` names are neither. A link to a folder is not
    followed (Path.rglob does not either), and a folder that cannot be listed, a link to nothing or to itself, a
    pipe, socket or device are no files: rglob passed them over without a word, so a delivery in such a folder,
    or one that is such a link, was in neither the ledger nor the summary (the filesystem review)."""
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            skipped.append((folder, f"a folder that cannot be listed: {exc.strerror}"))
            continue
        for e in entries:
            if not is_delivery((e.name,)):
                continue
            p = Path(e.path)
            try:
                link = e.is_symlink()
                mode = os.stat(p).st_mode  # the link's target
            except OSError as exc:
                skipped.append((p, f"a link to nothing that can be read: {exc.strerror}"))
                continue
            if stat.S_ISDIR(mode):
                if link:
                    skipped.append((p, "a link to a folder, not followed"))
                else:
                    stack.append(p)
            elif stat.S_ISREG(mode):
                files.append(p)
            else:
                skipped.append((p, "not a regular file: a pipe, socket or device"))
    return files, skipped


def unlisted(landing_dir: Path, source: str) -> list[str]:
    """The entries of listing() that are no files to read."""
    return listing(landing_dir, source)[1]


def stray_files(landing_dir: Path, limit: int = 1000) -> list[str]:
    """Files under landing/ that no source reads (relative paths, sorted; at most `limit`): directly in landing/,
    or under a folder that is not a source's (`landing/Orders/`, `landing/customers/`). Hidden and `_` names
    are not deliveries, as in discover."""
    if not landing_dir.is_dir():
        return []
    read = [landing_dir / s for s in SOURCES if (landing_dir / s).is_dir()]
    out: list[str] = []
    for entry in sorted(landing_dir.iterdir()):
        if not is_delivery((entry.name,)) or entry.name in SOURCES:
            continue
        if entry.is_dir() and any(entry.samefile(r) for r in read):
            continue  # `Orders/` on a file system blind to case (macOS's default) is `orders/`: read
        found = [entry] if entry.is_file() else sorted(
            p for p in entry.rglob("*") if p.is_file() and is_delivery(p.relative_to(entry).parts))
        out += [shown(p.relative_to(landing_dir).as_posix()) for p in found]
        if len(out) >= limit:
            return out[:limit]
    return out


def sha256_of(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def no_batch_date_message(f: LandingFile) -> str:
    why = f" ({f.batch_date_error})" if f.batch_date_error else ""
    return f"{f.shown}: no batch date{why}: {BATCH_DATE_HELP}"


def unsupported_message(f: LandingFile) -> str:
    return (
        f"{f.shown}: unsupported file type; supported endings are "
        f"{', '.join(SUPPORTED_SUFFIXES)}"
    )


def _chunks(f: LandingFile):
    """The file's (decompressed) bytes in chunks; a corrupt gzip raises FileRejected."""
    try:
        opener = gzip.open if f.compression == "gzip" else open
        with opener(f.path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:  # no permission, an I/O error: not the bytes' fault
            raise FileRejected(f"{f.shown}: unreadable: cannot be read ({exc.strerror})") from None
        raise FileRejected(f"{f.shown}: unreadable: not a valid gzip file ({exc})") from None


# A file with at least this many valid UTF-8 multi-byte characters and at least UTF8_VALID_PER_ERROR of them
# per invalid byte sequence is UTF-8 with damaged bytes, not GBK (see sniff_text).
UTF8_MIN_MULTIBYTE = 20
UTF8_VALID_PER_ERROR = 4


_SNIFF = threading.local()  # sniff_text's counts, per thread (files are read by several worker threads)
_COUNT_ERRORS = "privdom-count-utf8-errors"


def _count_error(exc: UnicodeDecodeError) -> tuple[str, int]:
    """Codec error handler of sniff_text's UTF-8 pass: counts an invalid sequence, notes the line of the first,
    and leaves it out. (Counting U+FFFD in a "replace" decoding took a real U+FFFD, valid UTF-8, for damage.)"""
    state = _SNIFF.state
    if state["first_line"] is None:
        state["first_line"] = state["lines"] + exc.object.count(b"\n", 0, exc.start) + 1
    state["errors"] += 1
    return "", exc.end


codecs.register_error(_COUNT_ERRORS, _count_error)


def sniff_text(f: LandingFile) -> tuple[str, bool]:
    """Detect a text file's encoding: ``utf-8-sig`` (BOM), ``utf-8`` or ``gb18030``.

    Returns (encoding, is_empty). One streaming pass for UTF-8 input, two for GB18030; never row by row.
    Raises FileRejected when the bytes decode in neither UTF-8 nor GB18030, and when the file is UTF-8 with a
    few invalid bytes: at least UTF8_MIN_MULTIBYTE valid multi-byte characters and UTF8_VALID_PER_ERROR of them per
    invalid sequence. GB18030 decodes almost any bytes, so reading such a file as GB18030 turned every Chinese
    value of it into mojibake because of one stray byte. GBK text read as UTF-8 breaks at almost every
    character (a GBK pair is valid UTF-8 about one time in twelve: some ten invalid sequences per valid
    character), so the two do not meet.
    """
    encoding = None
    state = _SNIFF.state = {"errors": 0, "first_line": None, "lines": 0}
    decoder = codecs.getincrementaldecoder("utf-8")(_COUNT_ERRORS)
    nonblank = False
    first = True
    multibyte = 0
    for chunk in _chunks(f):
        if first:
            first = False
            if chunk.startswith(UTF8_BOM):
                encoding = "utf-8-sig"
                chunk = chunk[len(UTF8_BOM) :]
        if not nonblank and chunk.strip(_WHITESPACE):
            nonblank = True
        text = decoder.decode(chunk)  # invalid sequences counted (_count_error) and left out
        multibyte += len(text) - len(text.encode("ascii", "ignore"))
        state["lines"] += text.count("\n")
        if state["errors"] > 100 and state["errors"] * UTF8_VALID_PER_ERROR > multibyte:
            break  # not UTF-8 with a few damaged bytes: decided, no need to read on
    else:
        decoder.decode(b"", final=True)
    errors, first_error_line = state["errors"], state["first_line"]
    if errors == 0:
        return encoding or "utf-8", not nonblank
    if encoding == "utf-8-sig":
        raise FileRejected(f"{f.shown}: undecodable: starts with a UTF-8 byte order mark but is not valid UTF-8 "
                           f"(first invalid byte on line {first_error_line})")
    if multibyte >= UTF8_MIN_MULTIBYTE and errors * UTF8_VALID_PER_ERROR <= multibyte:
        raise FileRejected(
            f"{f.shown}: undecodable: UTF-8 with {errors} invalid byte sequence(s) among {multibyte} valid "
            f"characters (first on line {first_error_line}); not read as GBK, which would garble every Chinese "
            f"value of it: correct those bytes and deliver the file again")
    decoder = codecs.getincrementaldecoder("gb18030")()
    try:
        for chunk in _chunks(f):
            if not nonblank and chunk.strip(_WHITESPACE):
                nonblank = True
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise FileRejected(
            f"{f.shown}: undecodable: the bytes are neither UTF-8 nor GBK/GB18030 ({exc.reason} at byte {exc.start} of a chunk)"
        ) from None
    return "gb18030", not nonblank


def transcode_to_utf8(f: LandingFile, encoding: str, target: Path) -> None:
    """Write the (decompressed) file as plain UTF-8 without BOM, streaming in chunks."""
    decoder = codecs.getincrementaldecoder(encoding)()
    with open(target, "w", encoding="utf-8", newline="") as out:
        for chunk in _chunks(f):
            out.write(decoder.decode(chunk))
        out.write(decoder.decode(b"", final=True))
