"""Bearer tokens: stored as digests, authenticated in constant time, bad token files refused by line."""

from __future__ import annotations

import pytest

from dynamod.security.identity import Principal, Role
from dynamod.security.tokens import (
    TokenFileError,
    format_line,
    load_tokens,
    new_token,
    parse_tokens,
    token_digest,
)

DIGEST = "ab" * 32


def table_of(**tokens: tuple[str, Role]):
    return parse_tokens("\n".join(format_line(name, role, token_digest(token))
                                  for name, (token, role) in tokens.items()))


def test_new_tokens_are_long_random_and_url_safe():
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(len(t) >= 43 and all(c.isalnum() or c in "-_" for c in t) for t in tokens)


def test_a_digest_is_sha256_hex():
    assert token_digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_authenticate_accepts_the_token_and_refuses_another():
    app, ops = new_token(), new_token()
    table = table_of(app=(app, Role.WRITER), ops=(ops, Role.ADMIN))
    assert len(table) == 2
    assert table.authenticate(app) == Principal("client", "app", Role.WRITER)
    assert table.authenticate(ops) == Principal("client", "ops", Role.ADMIN)
    assert table.authenticate(new_token()) is None
    assert table.authenticate(app[:-1]) is None
    assert table.authenticate("") is None
    assert table.authenticate("\ud800") is None  # cannot be encoded: no token of ours


def test_the_file_holds_the_digest_not_the_token():
    token = new_token()
    line = format_line("app", Role.READER, token_digest(token))
    assert token not in line
    assert line == f"app reader {token_digest(token)}"


def test_comments_and_blank_lines_are_ignored_and_digests_may_be_upper_case():
    token = new_token()
    text = f"# tokens\n\n   \nprom  reader   {token_digest(token).upper()}  \n# end\n"
    table = parse_tokens(text)
    assert len(table) == 1 and table.authenticate(token) == Principal("client", "prom", Role.READER)
    assert len(parse_tokens("")) == 0


@pytest.mark.parametrize(("text", "line", "reason"), [
    (f"# ok\napp boss {DIGEST}\n", 2, "unknown role"),
    ("app reader abc\n", 1, "64 hex digits"),
    (f"app reader {'zz' * 32}\n", 1, "64 hex digits"),
    (f"app reader {DIGEST}0\n", 1, "64 hex digits"),
    (f"app reader {DIGEST}\n\napp admin {'cd' * 32}\n", 3, "duplicate name 'app'"),
    (f"my app reader {DIGEST}\n", 1, "no spaces"),
    ("app reader\n", 1, "NAME ROLE SHA256HEX"),
])
def test_a_bad_line_is_refused_with_its_number(text, line, reason):
    with pytest.raises(TokenFileError, match=reason) as caught:
        parse_tokens(text, source="tokens")
    assert caught.value.line == line
    assert f"tokens, line {line}:" in str(caught.value)


@pytest.mark.parametrize(("name", "digest"), [("two words", DIGEST), ("", DIGEST), ("#app", DIGEST),
                                              ("app", "abc")])
def test_format_line_refuses_what_the_file_could_not_hold(name, digest):
    with pytest.raises(TokenFileError):
        format_line(name, Role.READER, digest)


def test_load_tokens_reads_a_file_and_names_it_in_errors(tmp_path):
    token = new_token()
    path = tmp_path / "tokens"
    path.write_text(format_line("app", Role.ADMIN, token_digest(token)) + "\n")
    assert load_tokens(path).authenticate(token) == Principal("client", "app", Role.ADMIN)

    path.write_text(f"app reader {DIGEST}\napp reader {DIGEST}\n")
    with pytest.raises(TokenFileError, match=f"{path}, line 2: duplicate"):
        load_tokens(path)

    with pytest.raises(TokenFileError, match="cannot read token file .*missing.*No such file"):
        load_tokens(tmp_path / "missing")

    path.write_bytes(b"\xff\xfe")
    with pytest.raises(TokenFileError, match="not UTF-8"):
        load_tokens(path)
