"""The statement guard's lexer, fingerprints, modes and allow-list, without a server.

The injection corpus (tests/data/sql_injection_payloads.txt, tests/sql_corpus.py) is pasted into
string-built queries, as the bug the guard backstops would: every ``rule``
payload is flagged in each flavour it applies to; every ``allowlist`` payload
passes the rules (what the lexer cannot know, said plainly) but has a
fingerprint the legitimate query does not. Hypothesis checks the other side:
arbitrary text inside literals and comments never triggers a rule and never
changes a fingerprint. The SQL SQLAlchemy really emits is checked on real
servers in tests/integration/test_guard.py.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sql_corpus import FLAVOURS, LEGIT, PAYLOADS, TEMPLATES, Payload
from sqlalchemy import exc as sa_exc

from sqlalchemy_smartpool import guard as G
from sqlalchemy_smartpool.errors import ConfigError


def test_the_corpus_is_big_enough() -> None:
    assert sum(p.expect == "rule" for p in PAYLOADS) >= 40
    assert sum(p.expect == "allowlist" for p in PAYLOADS) >= 10


@pytest.mark.parametrize("payload", [p for p in PAYLOADS if p.expect == "rule"], ids=str)
def test_rule_payloads_are_flagged(payload: Payload) -> None:
    for flavour in payload.flavours:
        assert G.scan(payload.statement(), flavour).findings, (flavour, payload.statement())


@pytest.mark.parametrize("payload", [p for p in PAYLOADS if p.expect == "allowlist"], ids=str)
def test_allowlist_payloads_pass_the_rules_but_not_the_allowlist(payload: Payload) -> None:
    for flavour in payload.flavours:
        verdict = G.scan(payload.statement(), flavour)
        assert verdict.findings == (), "the rules catch it: move it to the 'rule' section"
        assert verdict.fingerprint != G.scan(LEGIT[payload.context], flavour).fingerprint


@pytest.mark.parametrize(
    ("flavour", "sql", "findings"),
    [
        ("pg", "SELECT 1;", ()),  # one trailing ';' is no second statement
        ("pg", "SELECT 1; -- done\n", ("truncation",)),  # a comment that ends the statement
        ("pg", "-- a report\nSELECT 1", ()),  # a comment line in hand-written SQL is fine
        ("pg", "SELECT 1;;", ()),
        ("pg", "SELECT 1; SELECT 2", ("stacked",)),
        ("pg", "SELECT 1; 'x'", ("stacked",)),
        # PostgreSQL: a backslash is an ordinary character in '...' but escapes in E'...'
        ("pg", r"SELECT 'a\' ; DROP TABLE t; --'", ("stacked", "truncation")),
        ("pg", r"SELECT E'a\' ; DROP TABLE t; --'", ()),
        ("pg", r"SELECT e'it\'s', 'a;b'", ()),
        # MySQL: backslash escapes; '--' is a comment only before a space or control character
        ("mysql", r"SELECT 'a\' ; DROP TABLE t; --'", ()),
        ("mysql", "SELECT 1--1", ()),
        ("mysql", "SELECT 1 --x; DROP TABLE t", ("stacked",)),
        ("mysql", "SELECT 1 -- x; DROP TABLE t", ("truncation",)),
        ("mysql", "SELECT 1 # x\n FROM dual", ()),
        ("mysql", 'SELECT "a;b", `c;d`', ()),
        ("mysql", r'SELECT "a\"; DROP TABLE t"', ()),  # all inside the "..." string
        # block comments: nested in PostgreSQL, not in MySQL or SQLite
        ("pg", "SELECT /* a /* b */ ; */ 1", ()),
        ("mysql", "SELECT /* a /* b */ ; */ 1", ("stacked",)),
        ("pg", "SELECT /* a /* b */ 1", ("unbalanced",)),
        ("pg", "SELECT /*+ IndexScan(t) */ 1", ()),  # an optimizer hint is fine
        ("mysql", "SELECT /*!40001 SQL_NO_CACHE */ 1", ("executable_comment",)),
        # dollar quotes, not $1 placeholders nor identifiers with $
        ("pg", "SELECT $$a; b$$, $fn$ ' -- ; $fn$ FROM t WHERE x = $1", ()),
        ("pg", "SELECT a$b$c FROM t; DROP TABLE t", ("stacked",)),
        ("pg", "SELECT $q$ never closed", ("unbalanced",)),
        # identifiers
        ("pg", 'SELECT "a;b" FROM "T--x"', ()),
        ("sqlite", "SELECT [a;b], `c;d` FROM t", ()),
        ("sqlite", "SELECT [x'] ; DROP TABLE t; --'", ("stacked", "truncation")),
        ("pg", "SELECT 'it''s; -- fine'", ()),
        ("pg", "SELECT 'x' -- trailing remark", ("truncation",)),
    ],
)
def test_lexer_cases(flavour: str, sql: str, findings: tuple[str, ...]) -> None:
    assert G.scan(sql, flavour).findings == findings


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (
            "SELECT * FROM t WHERE id IN (%(id_1_1)s, %(id_1_2)s)",
            "select * from t where id in (%(x)s, %(y)s, %(z)s)",
        ),
        (
            "INSERT INTO t (a, b) VALUES (%(a__0)s, %(b__0)s) RETURNING t.id",
            "INSERT INTO t (a, b) VALUES (%(a__0)s, %(b__0)s), (%(a__1)s, %(b__1)s) RETURNING t.id",
        ),
        ("SELECT * FROM t WHERE a = 'x' AND b = 1.5e3", "SELECT  *\nFROM t WHERE a = 'yyy' AND b = 7"),
        ("SELECT * FROM t WHERE a = ?", "SELECT * FROM t WHERE a = $1"),
        ("SELECT * FROM t /* one */ WHERE a = ?", "SELECT * FROM t /* two */ WHERE a = :a"),
        ("SELECT a::int FROM t", "select A::INT from T"),
        ("SELECT * FROM t WHERE id IN (?)", "SELECT * FROM t WHERE id IN (?, ?, ?)"),
    ],
)
def test_same_fingerprint(a: str, b: str) -> None:
    assert G.scan(a).fingerprint == G.scan(b).fingerprint, (G.scan(a).shape, G.scan(b).shape)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SELECT * FROM t WHERE a = ?", "SELECT * FROM t WHERE a = ? OR 1 = 1"),
        ("SELECT * FROM t", "SELECT * FROM u"),
        ('SELECT "Name" FROM t', 'SELECT "name" FROM t'),  # quoted identifiers keep their case
        ("SELECT a FROM t", "SELECT a FROM t; SELECT b FROM t"),
    ],
)
def test_different_fingerprint(a: str, b: str) -> None:
    assert G.scan(a).fingerprint != G.scan(b).fingerprint


# ----------------------------------------------------------------------------------- fuzz

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


def _literal(text: str, flavour: str) -> str:
    if flavour == "mysql":
        text = text.replace("\\", "\\\\")
    return "'" + text.replace("'", "''") + "'"


def _ident(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FLAVOURS), _text, _text, _text)
def test_text_in_literals_and_comments_never_triggers(flavour: str, lit: str, block: str, line: str) -> None:
    block = block.replace("/", "")  # no comment opens or closes inside the comment
    line = line.replace("\n", " ").replace("\r", " ")
    for q in "'\"`":
        line = line.replace(q, "")
    block = block.lstrip("!M")  # /*! and /*M! are MySQL's executable comments: flagged everywhere
    ident = "`" + lit.replace("`", "``") + "`" if flavour == "mysql" else _ident(lit)
    sql = f"-- {line}\nSELECT {_literal(lit, flavour)} AS a, {ident} FROM t /*{block}*/ WHERE b = 1"
    verdict = G.scan(sql, flavour)
    assert verdict.findings == (), sql
    plain = f"SELECT {_literal('x', flavour)} AS a, {ident} FROM t WHERE b = 2"
    assert verdict.fingerprint == G.scan(plain, flavour).fingerprint


@settings(max_examples=200, deadline=None)
@given(_text)
def test_dollar_quoted_text_never_triggers(text: str) -> None:
    body = text.replace("$", "")
    assert G.scan(f"SELECT $body${body}$body$, $${body}$$", "pg").findings == ()


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FLAVOURS), _text)
def test_a_second_statement_after_a_closed_literal_is_always_stacked(flavour: str, text: str) -> None:
    sql = f"SELECT {_literal(text, flavour)}; DROP TABLE users"
    assert "stacked" in G.scan(sql, flavour).findings


# ------------------------------------------------------------------------ modes and errors


def test_detect_counts_logs_once_and_learns(caplog: pytest.LogCaptureFixture) -> None:
    guard = G.StatementGuard("detect")
    caplog.set_level(logging.WARNING, "sqlalchemy_smartpool.guard")
    for _ in range(3):
        guard.check("SELECT * FROM users WHERE id = 1; DROP TABLE users")
    guard.check("SELECT 1")
    assert guard.detections["stacked"] == 3 and guard.rejections == 0
    assert len(caplog.records) == 1  # a hot statement does not flood the log
    assert "stacked" in caplog.text and "drop table users" in caplog.text
    assert guard.learned[G.scan("SELECT 1").fingerprint] == 1


def test_enforce_raises_a_statement_error_without_the_literals() -> None:
    guard = G.StatementGuard("enforce")
    secret = "hunter2-password"
    with pytest.raises(G.StatementRejected) as info:
        guard.check(f"SELECT * FROM users WHERE pw = '{secret}'; DROP TABLE users")
    err = info.value
    assert isinstance(err, sa_exc.StatementError)
    assert err.rule == "stacked" and len(err.fingerprint) == 16
    assert secret not in str(err) and secret not in repr(err)
    assert "stacked" in str(err) and "drop table users" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert again.rule == err.rule and again.fingerprint == err.fingerprint
    assert guard.rejections == 1


def test_enforce_with_an_allowlist(tmp_path: Path) -> None:
    learner = G.StatementGuard("detect")
    learner.check(LEGIT["string"])
    learner.check(TEMPLATES["string"].format("bob"))  # the same fingerprint
    path = tmp_path / "allow.json"
    assert learner.save_allowlist(path) == 1
    assert json.loads(path.read_text())["fingerprints"]
    guard = G.StatementGuard("enforce", path)
    guard.check(TEMPLATES["string"].format("carol"))
    with pytest.raises(G.StatementRejected) as info:
        guard.check(TEMPLATES["string"].format("' OR '1'='1"))
    assert info.value.rule == "not_allowlisted"


def test_allowlist_from_text_and_iterables(tmp_path: Path) -> None:
    fp = G.scan("SELECT 1").fingerprint
    text = tmp_path / "allow.txt"
    text.write_text(f"# learned in staging\n{fp}  # select 1\n\n")
    assert G.load_allowlist(text) == {fp}
    assert G.load_allowlist([fp]) == {fp}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "not an allow-list file"),
        ('{"x": 1}', "not an allow-list file"),
        ("zz", "not a fingerprint"),
    ],
)
def test_a_bad_allowlist_file_names_field_value_and_source(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "allow"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        G.StatementGuard("enforce", path, source="URL parameter smartpool_statement_guard_allowlist")
    msg = str(info.value)
    assert "statement_guard_allowlist" in msg and str(path) in msg and reason in msg
    assert "URL parameter smartpool_statement_guard_allowlist" in msg


def test_a_missing_allowlist_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        G.load_allowlist(tmp_path / "nope.json")


def test_a_bad_mode_names_field_value_and_source() -> None:
    with pytest.raises(ConfigError) as info:
        G.StatementGuard("block", source="environment variable SMARTPOOL_STATEMENT_GUARD")
    msg = str(info.value)
    assert "statement_guard" in msg and "'block'" in msg and "off, detect, enforce" in msg
    assert "SMARTPOOL_STATEMENT_GUARD" in msg


def test_the_cache_is_bounded() -> None:
    guard = G.StatementGuard("detect", cache_size=8)
    for i in range(100):
        guard.check(f"SELECT {i}")
    assert len(guard._caches["pg"]) <= 8


def test_install_on_an_engine_rejects_before_sending(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'g.db'}")
    guard = G.install_guard(engine, "enforce")
    assert G.guard_of(engine) is guard
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE users (id INTEGER, name TEXT)")
        c.exec_driver_sql("INSERT INTO users VALUES (1, 'a;b -- c')")
    with engine.connect() as c, pytest.raises(G.StatementRejected):
        c.exec_driver_sql("SELECT * FROM users WHERE id = 1 OR 1=1 --")
    with engine.connect() as c:  # the connection stays usable after a rejection
        assert c.exec_driver_sql("SELECT name FROM users").scalar_one() == "a;b -- c"
    G.install_guard(engine, "off")
    assert G.guard_of(engine) is None
    with engine.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM users WHERE id = 1 OR 1=1 --").scalar_one() == 1
    engine.dispose()


# ------------------------------------------------------------------ the plugin: URL and env


@pytest.fixture
def plugin_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for key in ("SMARTPOOL_STATEMENT_GUARD", "SMARTPOOL_STATEMENT_GUARD_ALLOWLIST"):
        monkeypatch.delenv(key, raising=False)
    return f"sqlite:///{tmp_path / 'plugin.db'}?plugin=smartpool"


def test_the_plugin_installs_the_guard_from_the_url(plugin_url: str) -> None:
    engine = sa.create_engine(plugin_url + "&smartpool_statement_guard=enforce&smartpool_min_size=1")
    try:
        guard = G.guard_of(engine)
        assert guard is not None and guard.mode == "enforce"
        assert not [k for k in engine.url.query if k.startswith("smartpool_")]  # the driver never sees them
        with engine.connect() as c, pytest.raises(G.StatementRejected):
            c.exec_driver_sql("SELECT 1; SELECT 2")
    finally:
        engine.dispose()


def test_the_plugin_reads_the_environment_and_the_url_wins(
    plugin_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_text(G.scan("SELECT 1", "sqlite").fingerprint + "\n")
    monkeypatch.setenv("SMARTPOOL_STATEMENT_GUARD", "enforce")
    monkeypatch.setenv("SMARTPOOL_STATEMENT_GUARD_ALLOWLIST", str(allow))
    from sqlalchemy_smartpool.config import PoolConfig

    PoolConfig.from_env()  # the guard's variables are no unknown pool settings
    engine = sa.create_engine(plugin_url)
    try:
        guard = G.guard_of(engine)
        assert guard is not None and guard.mode == "enforce" and guard.allowlist is not None
        with engine.connect() as c:
            c.exec_driver_sql("SELECT 1")
            with pytest.raises(G.StatementRejected, match="not_allowlisted"):
                c.exec_driver_sql("SELECT 2 + 2")
    finally:
        engine.dispose()
    off = sa.create_engine(plugin_url + "&smartpool_statement_guard=off")
    assert G.guard_of(off) is None
    off.dispose()


@pytest.mark.parametrize(
    ("query", "env", "named"),
    [
        ("&smartpool_statement_guard=block", {}, "URL parameter smartpool_statement_guard"),
        ("", {"SMARTPOOL_STATEMENT_GUARD": "on"}, "environment variable SMARTPOOL_STATEMENT_GUARD"),
        (
            "&smartpool_statement_guard_allowlist=/nonexistent/a.json",
            {},
            "smartpool_statement_guard_allowlist",
        ),
        ("&smartpool_statement_guard=detect&smartpool_statement_guard=enforce", {}, "more than once"),
    ],
)
def test_the_plugin_refuses_bad_guard_settings_at_create_engine(
    plugin_url: str, monkeypatch: pytest.MonkeyPatch, query: str, env: dict[str, str], named: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        sa.create_engine(plugin_url + query)
    assert named in str(info.value) and "statement_guard" in str(info.value)
