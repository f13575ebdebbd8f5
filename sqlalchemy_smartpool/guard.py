"""The statement guard: an opt-in ``before_cursor_execute`` check against injected SQL.

Defence in depth, not a defence: bound parameters (which SQLAlchemy uses for
every value unless told otherwise) and a least-privilege database role are
what stop SQL injection. The guard catches the traces a successful injection
leaves in the statement text. It works the way ProxySQL's firewall and MySQL
Enterprise Firewall do:

* **rules**, from a small hand-written lexer that knows each dialect's
  literals and comments (``'...'`` with or without backslash escapes,
  ``E'...'``, ``$tag$...$tag$``, ``"..."``, backticks, ``[...]``, ``--``,
  MySQL's ``#`` and ``-- `` rule, nested ``/* */`` in PostgreSQL):

  - ``stacked``: a ``;`` outside literals and comments followed by more SQL;
  - ``truncation``: a line comment that ends the statement, follows a literal
    at once or holds a quote (``id = 1 OR 1=1 --``, ``admin'--``): the rest of
    the statement was cut off;
  - ``unbalanced``: a literal, quoted identifier or block comment that never ends;
  - ``executable_comment``: MySQL's ``/*! ... */`` (and MariaDB's ``/*M! */``),
    whose content the server runs;

* **fingerprints**: the statement with literals, numbers and placeholders
  replaced by ``?`` (runs of ``?, ?`` and of ``(...), (...)`` collapsed to one, so
  ``IN`` lists and multi-row ``VALUES`` of any length agree), hashed. In
  ``detect`` mode the guard counts the fingerprints it sees (``learned``); save
  them with :meth:`StatementGuard.save_allowlist` and give the file to
  ``enforce`` mode: anything else is rejected (``not_allowlisted``). That is
  what catches a ``UNION SELECT`` or ``' OR '1'='1'`` that the rules cannot.

Modes: ``off`` (no check), ``detect`` (log the first occurrence of each
finding, count every one), ``enforce`` (reject with
:class:`StatementRejected`, a ``sqlalchemy.exc.StatementError``). Messages,
logs and errors name the rule and the fingerprint and show the statement only
with its literals replaced: a literal may be a secret.

Cost: a verdict is cached per statement string (SQLAlchemy reuses compiled
strings), so a repeated statement costs a dict lookup; see docs/guard.md for
the measured numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import event
from sqlalchemy import exc as sa_exc

from . import stats as S
from .errors import ConfigError

logger = logging.getLogger("sqlalchemy_smartpool.guard")

Mode = Literal["off", "detect", "enforce"]
MODES: tuple[str, ...] = ("off", "detect", "enforce")

STACKED = "stacked"
TRUNCATION = "truncation"
UNBALANCED = "unbalanced"
EXECUTABLE_COMMENT = "executable_comment"
NOT_ALLOWLISTED = "not_allowlisted"

#: what each rule means, for messages
RULES: dict[str, str] = {
    STACKED: "stacked statements (a ';' followed by more SQL)",
    TRUNCATION: "comment truncation (a line comment ending the statement, after a literal or with a quote)",
    UNBALANCED: "an unterminated literal, quoted identifier or comment",
    EXECUTABLE_COMMENT: "a MySQL executable comment (/*! ... */)",
    NOT_ALLOWLISTED: "a statement fingerprint not in the allow-list",
}

#: dialect name -> lexer flavour
_FLAVOURS = {"postgresql": "pg", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}


# ----------------------------------------------------------------------------- the lexer


class Verdict:
    """What the lexer found in one statement string (cached per string)."""

    __slots__ = ("findings", "fingerprint", "shape")

    def __init__(self, findings: tuple[str, ...], shape: str) -> None:
        self.findings = findings
        self.shape = shape
        self.fingerprint = hashlib.blake2b(shape.encode(), digest_size=8).hexdigest()

    def __repr__(self) -> str:
        return f"<Verdict {self.fingerprint} {list(self.findings)}>"


def _quoted(open_: str, close: str, backslash: bool) -> re.Pattern[str]:
    """A quoted token: doubled closers escape; with ``backslash``, so does a backslash."""
    o, c = re.escape(open_), re.escape(close)
    if backslash:
        return re.compile(rf"{o}[^{c}\\]*(?:(?:\\.|{c}{c})[^{c}\\]*)*{c}", re.S)
    return re.compile(rf"{o}[^{c}]*(?:{c}{c}[^{c}]*)*{c}", re.S)


_SQ, _SQ_BS = _quoted("'", "'", False), _quoted("'", "'", True)
_DQ, _DQ_BS = _quoted('"', '"', False), _quoted('"', '"', True)
_BQ = _quoted("`", "`", False)
_BRACKET = re.compile(r"\[[^\]]*\]")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\uffff][\w\x80-\uffff]*)?\$")
_BLOCK_EDGE = re.compile(r"/\*|\*/")

#: where something the lexer must look at may start, per flavour
_STARTS = {
    "pg": re.compile(r"['\";$]|--|/\*"),
    "mysql": re.compile(r"['\";`#]|--|/\*"),
    "sqlite": re.compile(r"['\";`\[]|--|/\*"),
    "generic": re.compile(r"['\";]|--|/\*"),
}

#: placeholders (every paramstyle), numbers: all become ``?`` in a fingerprint
_VALUES = re.compile(
    r"%\([^)]*\)s|%s|(?<![\w$:]):[A-Za-z_]\w*|\$\d+|\?"
    r"|(?<![\w$.])(?:0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
)
_SPACE = re.compile(r"\s+")
_RUN = re.compile(r"\?(?:\s*,\s*\?)+")
_GROUPS = re.compile(r"(\([^()]*\))(?:\s*,\s*\1)+")
_IDENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")


def flavour_of(dialect_name: str) -> str:
    return _FLAVOURS.get(dialect_name, "generic")


def scan(sql: str, flavour: str = "pg") -> Verdict:
    """Lex ``sql`` as ``flavour`` (``pg``, ``mysql``, ``sqlite``, ``generic``): findings + fingerprint."""
    starts = _STARTS[flavour]
    mysql = flavour == "mysql"
    findings: list[str] = []
    shape: list[str] = []  # code, with literals as ``?`` and identifiers kept
    pos = 0
    n = len(sql)
    after_semi = False  # a ';' outside literals was seen: anything significant now is stacked
    last_literal_end = -1  # where the last literal ended (for truncation)

    def code(upto: int) -> None:
        nonlocal after_semi
        text = sql[pos:upto]
        if text:
            if after_semi and text.strip(" \t\r\n;"):
                findings.append(STACKED)
                after_semi = False
            shape.append(text)

    def literal(kind: str, text: str) -> None:
        nonlocal after_semi
        if after_semi:
            findings.append(STACKED)
            after_semi = False
        shape.append("?" if kind == "value" else text)

    while pos < n:
        m = starts.search(sql, pos)
        if m is None:
            code(n)
            break
        i = m.start()
        ch = sql[i]
        # "--": MySQL wants whitespace or a control character (or the end) after it
        if ch == "-" and mysql and i + 2 < n and sql[i + 2] > " ":
            code(i + 2)
            pos = i + 2
            continue
        if ch == "-" or ch == "#":  # a line comment, to the end of the line
            code(i)
            end = sql.find("\n", i)
            end = n if end < 0 else end
            _line_comment(sql, i, end, last_literal_end, findings)
            pos = end
            continue
        if ch == "/":  # "/*"
            code(i)
            if sql.startswith("/*!", i) or sql.startswith("/*M!", i):
                findings.append(EXECUTABLE_COMMENT)
            end = _block_end(sql, i, nested=flavour == "pg")
            if end < 0:
                findings.append(UNBALANCED)
                pos = n
                break
            shape.append(" ")
            pos = end
            continue
        if ch == ";":
            code(i)
            shape.append(";")
            after_semi = True
            pos = i + 1
            continue
        if ch == "$":  # PostgreSQL dollar quoting (not $1, not inside an identifier)
            tag = _DOLLAR_TAG.match(sql, i)
            if tag is None or (i and sql[i - 1] in _IDENT_CHARS):
                code(i + 1)
                pos = i + 1
                continue
            close = sql.find(tag.group(), tag.end())
            code(i)
            if close < 0:
                findings.append(UNBALANCED)
                pos = n
                break
            literal("value", "")
            pos = last_literal_end = close + len(tag.group())
            continue
        # a quote: ' " ` [
        if ch == "'":
            escaped = mysql or (
                flavour == "pg" and i > 0 and sql[i - 1] in "eE" and (i < 2 or sql[i - 2] not in _IDENT_CHARS)
            )
            pattern = _SQ_BS if escaped else _SQ
            kind = "value"
        elif ch == '"':
            pattern, kind = (_DQ_BS, "value") if mysql else (_DQ, "ident")
        elif ch == "`":
            pattern, kind = _BQ, "ident"
        else:
            pattern, kind = _BRACKET, "ident"
        tok = pattern.match(sql, i)
        code(i)
        if tok is None:
            findings.append(UNBALANCED)
            pos = n
            break
        literal(kind, tok.group())
        pos = last_literal_end = tok.end()
    return Verdict(tuple(dict.fromkeys(findings)), _shape("".join(shape)))


def _line_comment(sql: str, start: int, end: int, last_literal_end: int, findings: list[str]) -> None:
    """A line comment that cut the statement off: it ends the statement (``id = 1 OR 1=1 --``),
    follows a literal at once (``'admin'--``) or swallowed a quote (``--' AND pw = '...'``)."""
    body = sql[start:end]
    if (
        not sql[end:].strip()
        or (last_literal_end >= 0 and not sql[last_literal_end:start].strip())
        or "'" in body
        or '"' in body
        or "`" in body
    ):
        findings.append(TRUNCATION)


def _block_end(sql: str, start: int, *, nested: bool) -> int:
    """Where the block comment opened at ``start`` ends (-1: never)."""
    if not nested:
        end = sql.find("*/", start + 2)
        return -1 if end < 0 else end + 2
    depth = 0
    for m in _BLOCK_EDGE.finditer(sql, start):
        depth += 1 if m.group() == "/*" else -1
        if depth == 0:
            return m.end()
    return -1


def _shape(code: str) -> str:
    """The normalised statement a fingerprint hashes: values as ``?``, case and spacing folded."""
    code = _VALUES.sub("?", code)
    code = _SPACE.sub(" ", code).strip(" ;")
    code = _RUN.sub("?", code)  # IN lists and VALUES rows of any length agree
    code = _GROUPS.sub(r"\1", code)
    return _fold_case(code)


def _fold_case(code: str) -> str:
    """Lower-case everything but quoted identifiers (kept as written: they are case-sensitive)."""
    if '"' not in code and "`" not in code and "[" not in code:
        return code.lower()
    parts = re.split(r"(\"[^\"]*\"|`[^`]*`|\[[^\]]*\])", code)
    return "".join(p if i % 2 else p.lower() for i, p in enumerate(parts))


# ----------------------------------------------------------------------------- the guard


class StatementRejected(sa_exc.StatementError):
    """The statement guard refused to send a statement (``enforce`` mode).

    ``rule`` names what was found (see :data:`RULES`); ``fingerprint`` is the
    statement's. The statement shown has its literals replaced by ``?``.
    """

    def __init__(self, rule: str, fingerprint: str, shape: str) -> None:
        self.rule = rule
        self.fingerprint = fingerprint
        super().__init__(
            f"statement rejected by the statement guard: {RULES.get(rule, rule)} "
            f"[rule {rule}, fingerprint {fingerprint}]",
            _clip(shape),
            None,
            None,
            hide_parameters=True,
        )

    def __reduce__(self) -> Any:
        return type(self), (self.rule, self.fingerprint, self.statement or "")


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class StatementGuard:
    """Rules and an optional allow-list of fingerprints, checked before each statement.

    ``mode``: ``"off"``, ``"detect"`` or ``"enforce"`` (may be changed at any
    time). ``allowlist``: fingerprints (an iterable, or a file written by
    :meth:`save_allowlist`); with one, any other fingerprint is a finding.
    ``learn``: count the fingerprints seen in ``detect`` mode.
    """

    def __init__(
        self,
        mode: str = "detect",
        allowlist: Iterable[str] | str | Path | None = None,
        *,
        learn: bool = True,
        cache_size: int = 4096,
        source: str = "StatementGuard()",
    ) -> None:
        self.mode = check_mode(mode, source)
        self.allowlist: frozenset[str] | None = (
            None if allowlist is None else load_allowlist(allowlist, source=source)
        )
        self.learn = learn
        self._cache_size = cache_size
        self._caches: dict[str, dict[str, Verdict]] = {}
        #: fingerprint -> times seen (``detect`` mode with ``learn``)
        self.learned: Counter[str] = Counter()
        #: fingerprint -> the normalised statement, for the allow-list file
        self.shapes: dict[str, str] = {}
        #: rule -> how many statements it flagged
        self.detections: Counter[str] = Counter()
        self.rejections = 0
        self._logged: set[tuple[str, str]] = set()

    # -- the check ----------------------------------------------------------------------

    def verdict(self, statement: str, flavour: str = "pg") -> Verdict:
        """The (cached) lexer verdict on ``statement``."""
        cache = self._caches.get(flavour)
        if cache is None:
            cache = self._caches[flavour] = {}
        v = cache.get(statement)
        if v is None:
            if len(cache) >= self._cache_size:
                cache.clear()
            v = cache[statement] = scan(statement, flavour)
        return v

    def check(self, statement: str, flavour: str = "pg", pool: Any = None) -> Verdict:
        """Judge one statement: count, log (first time) or raise, as the mode says."""
        v = self.verdict(statement, flavour)
        mode = self.mode
        if mode == "off":
            return v
        allow = self.allowlist
        if v.findings or (allow is not None and v.fingerprint not in allow):
            self._found(v, pool)
        elif self.learn and mode == "detect":
            self._learn(v)
        return v

    def _learn(self, v: Verdict) -> None:
        self.learned[v.fingerprint] += 1
        if v.fingerprint not in self.shapes:
            self.shapes[v.fingerprint] = v.shape

    def _found(self, v: Verdict, pool: Any) -> None:
        rules = v.findings or (NOT_ALLOWLISTED,)
        enforce = self.mode == "enforce"
        for rule in rules:
            self.detections[rule] += 1
        _count(pool, S.GUARD_DETECTIONS)
        if enforce:
            self.rejections += 1
            _count(pool, S.GUARD_REJECTIONS)
            raise StatementRejected(rules[0], v.fingerprint, v.shape)
        if self.learn and v.findings == ():  # an unknown but clean fingerprint: learn it too
            self._learn(v)
        key = (rules[0], v.fingerprint)
        if key not in self._logged:  # once per rule and fingerprint: a hot statement must not flood
            self._logged.add(key)
            logger.warning(
                "statement guard (detect): %s [rule %s, fingerprint %s]: %s",
                RULES.get(rules[0], rules[0]),
                rules[0],
                v.fingerprint,
                _clip(v.shape),
            )

    # -- the allow-list -----------------------------------------------------------------

    def allowlist_data(self) -> dict[str, Any]:
        """The learned fingerprints as :meth:`save_allowlist` writes them."""
        return {
            "fingerprints": {
                fp: {"statement": self.shapes.get(fp, ""), "seen": n} for fp, n in self.learned.most_common()
            }
        }

    def save_allowlist(self, path: str | Path) -> int:
        """Write the learned fingerprints (JSON); returns how many. Give the file to ``enforce``."""
        data = self.allowlist_data()
        Path(path).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        return len(data["fingerprints"])

    def stats(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "detections": dict(self.detections),
            "rejections": self.rejections,
            "fingerprints_learned": len(self.learned),
            "allowlist_size": None if self.allowlist is None else len(self.allowlist),
        }

    def __repr__(self) -> str:
        size = "none" if self.allowlist is None else len(self.allowlist)
        return (
            f"<StatementGuard mode={self.mode} allowlist={size} detections={sum(self.detections.values())}>"
        )


def _count(pool: Any, key: str) -> None:
    """Bump ``key`` in a SmartPool's stats (and so its metrics); other pools have none."""
    engine = getattr(pool, "_engine", None)
    count = getattr(engine, "count", None)
    if count is not None:
        count(key)


def check_mode(mode: Any, source: str) -> str:
    if mode not in MODES:
        raise ConfigError("statement_guard", mode, f"must be one of {', '.join(MODES)}", source=source)
    return str(mode)


def load_allowlist(
    allowlist: Iterable[str] | str | Path, *, source: str = "install_guard()"
) -> frozenset[str]:
    """Fingerprints from an iterable, or from a file: the JSON :meth:`StatementGuard.save_allowlist`
    writes, or plain text with one fingerprint per line (``#`` comments)."""
    if not isinstance(allowlist, (str, Path)):
        items = frozenset(allowlist)
        for fp in items:
            if not isinstance(fp, str) or not _FINGERPRINT.fullmatch(fp):
                raise ConfigError("statement_guard_allowlist", fp, "not a fingerprint", source=source)
        return items
    path = Path(allowlist)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(
            "statement_guard_allowlist", str(path), f"cannot be read ({err.strerror})", source=source
        ) from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
            fps = data["fingerprints"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                "statement_guard_allowlist",
                str(path),
                "not an allow-list file (JSON with 'fingerprints')",
                source=source,
            ) from None
        entries: list[str] = list(fps)
    else:
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        entries = [line for line in lines if line]
    try:
        return load_allowlist(entries, source=source)
    except ConfigError as err:
        raise ConfigError(
            "statement_guard_allowlist", str(path), f"holds {err.value!r}: {err.reason}", source=source
        ) from None


_FINGERPRINT = re.compile(r"[0-9a-f]{16}")


# ---------------------------------------------------------------------------- installing

#: engine -> (guard, listener) installed on it
_installed: weakref.WeakKeyDictionary[Any, tuple[StatementGuard, Any]] = weakref.WeakKeyDictionary()


def install_guard(
    engine: Any,
    mode: str = "detect",
    allowlist: Iterable[str] | str | Path | None = None,
    *,
    guard: StatementGuard | None = None,
    learn: bool = True,
    source: str = "install_guard()",
) -> StatementGuard:
    """Check every statement ``engine`` (an Engine or AsyncEngine) sends; returns the guard.

    A second call replaces the first guard. ``mode="off"`` removes it.
    Works with any pool class; detections are counted in a SmartPool's stats too.
    """
    sync_engine = getattr(engine, "sync_engine", engine)
    uninstall_guard(sync_engine)
    g = guard or StatementGuard(mode, allowlist, learn=learn, source=source)
    if g.mode == "off" and guard is None:
        return g
    flavour = flavour_of(sync_engine.dialect.name)
    check = g.check

    def before_cursor_execute(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        check(statement, flavour, conn.engine.pool)

    event.listen(sync_engine, "before_cursor_execute", before_cursor_execute)
    _installed[sync_engine] = (g, before_cursor_execute)
    return g


def uninstall_guard(engine: Any) -> None:
    sync_engine = getattr(engine, "sync_engine", engine)
    entry = _installed.pop(sync_engine, None)
    if entry is not None:
        event.remove(sync_engine, "before_cursor_execute", entry[1])


def guard_of(engine: Any) -> StatementGuard | None:
    """The guard installed on ``engine``, if any."""
    entry = _installed.get(getattr(engine, "sync_engine", engine))
    return entry[0] if entry is not None else None


def settings_from_text(values: Mapping[str, tuple[str, str]]) -> tuple[str, str | None]:
    """``(mode, allowlist path)`` from text settings ``{name: (value, source)}`` (URL, environment),
    validated now so a typo fails at ``create_engine()``."""
    mode, mode_source = values.get("statement_guard", ("off", "default"))
    mode = check_mode(mode.strip().lower(), mode_source)
    path = values.get("statement_guard_allowlist")
    if path is not None:
        load_allowlist(path[0], source=path[1])
    return mode, path[0] if path is not None else None


__all__ = [
    "MODES",
    "RULES",
    "StatementGuard",
    "StatementRejected",
    "Verdict",
    "guard_of",
    "install_guard",
    "load_allowlist",
    "scan",
    "uninstall_guard",
]
