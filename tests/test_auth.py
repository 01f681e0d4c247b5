"""Tokens carry user, projects, scopes and expiry; logs never show a token (service/auth.py, docs/protocol.md §1.1)."""

from __future__ import annotations

import logging

import pytest

from service import auth

GOOD = "s3cret-Q7mVr2kX9pLw4ZtB8nYc3HsJ6dFa1Ge5"


def test_token_round_trip_and_scopes() -> None:
    """A token names its user, projects and scopes; admin implies subscribe and publish."""
    token = auth.issue(GOOD, user="ann", projects=["p1", "p2"], scopes=["subscribe"])
    p = auth.verify(GOOD, token)
    assert p.user == "ann" and p.projects == frozenset({"p1", "p2"})
    assert p.may("subscribe", "p1") and not p.may("subscribe", "p3") and not p.may("publish", "p1")
    admin = auth.verify(GOOD, auth.issue(GOOD, user="root", projects="*", scopes=["admin"]))
    assert admin.projects is None and admin.may("publish", "anything") and admin.may("subscribe", "x")
    with pytest.raises(auth.InvalidToken, match="invalid"):
        auth.verify("t" * 32, token)
    with pytest.raises(auth.InvalidToken, match="expired"):
        auth.verify(GOOD, auth.issue(GOOD, user="a", projects="*", scopes=["admin"], ttl_s=5, now=1000))
    with pytest.raises(auth.InvalidToken, match="missing"):
        auth.verify(GOOD, "")
    with pytest.raises(ValueError, match="unknown scope"):
        auth.issue(GOOD, user="a", projects="*", scopes=["root"])


def test_access_log_hides_tokens(caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn's access log never prints a `token=` query value."""
    auth.install_log_redaction()
    logger = logging.getLogger("uvicorn.access")
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1", "GET", "/api/stream?projects=a&token=SECRET123", "1.1", 200)
    assert "SECRET123" not in caplog.text and "token=***" in caplog.text
