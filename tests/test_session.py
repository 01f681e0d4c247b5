"""The connection protocol (service/session.py) driven with no server, no socket and no database:
frames in, effects out, answers fed back by hand, as its drivers do (docs/protocol.md §4, §5)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from service.auth import InvalidToken, Principal
from service.codes import CloseCode, ErrorCode
from service.db import DatabaseUnavailable
from service.eventlog import ProjectNotFound, StoredEvent
from service.limits import RateLimit
from service.session import (
    MAX_PIPELINED,
    Ack,
    Append,
    CheckAck,
    Close,
    Connect,
    Disconnect,
    Effect,
    FindStart,
    Reauthorize,
    Refuse,
    Send,
    Session,
)

RUN = {"runId": "r1", "status": "running", "progress": 5}


def principal(user: str = "alice", projects: frozenset[str] | None = None, scopes: str = "admin") -> Principal:
    return Principal(user=user, projects=projects, scopes=frozenset(scopes.split(",")), expires_at=2e9)


TOKENS = {
    "same-user-fewer-projects": principal(projects=frozenset({"a"}), scopes="subscribe"),
    "another-user": principal(user="mallory"),
}


def verify(token: str) -> Principal:
    if token not in TOKENS:
        raise InvalidToken("invalid token: not one of ours")
    return TOKENS[token]


def session(**kw: Any) -> Session:
    return Session(kw.pop("principal", principal()), verify=verify, **kw)


def send(s: Session, **message: Any) -> list[Effect]:
    s.receive(json.dumps(message))
    return s.take()


def sent(effects: list[Effect]) -> list[dict[str, Any]]:
    """The frames among `effects`, decoded, in order (error frames included)."""
    frames = []
    for effect in effects:
        if isinstance(effect, Send):
            frames.append(json.loads(effect.text))
        elif isinstance(effect, Refuse):
            frames.append(json.loads(effect.frame()))
    return frames


def stored(project_id: str, seq: int, message_id: str) -> StoredEvent:
    return StoredEvent(project_id, seq, message_id, "agent_run_progress", json.dumps(RUN), datetime.now(UTC), bytes(32))


def subscribed(s: Session, project_id: str, head: int = 0) -> None:
    """Subscribe `s` to `project_id` and answer its lookup."""
    (find,) = send(s, type="subscribe", projectId=project_id)
    assert isinstance(find, FindStart)
    s.found(find.ticket, head=head, cursor=None)
    s.take()


def publish(project_id: str, message_id: str) -> dict[str, Any]:
    return {"type": "agent_run_progress", "projectId": project_id, "messageId": message_id, "data": RUN}


# --- subscribing: the start-position rule, once ------------------------------------------------------


def test_subscribe_without_after_asks_for_the_cursor_and_resumes_after_it() -> None:
    """No `after`: the session asks for the head and the durable cursor, starts after the cursor,
    answers `subscribed` and only then asks for delivery."""
    s = session()
    (find,) = send(s, type="subscribe", projectId="p")
    assert find == FindStart(find.ticket, "p", cursor=True)
    assert not s.accepting  # the next message waits for the answer
    s.found(find.ticket, head=9, cursor=4)
    effects = s.take()
    assert sent(effects) == [{"type": "subscribed", "projectId": "p", "after": 4, "head": 9}]
    assert effects[-1] == Connect("p", after=4, head=9)
    assert s.accepting and list(s.subscribed) == ["p"]


@pytest.mark.parametrize(
    ("after", "cursor", "head", "start"),
    [(None, None, 7, 7), (0, 3, 7, 0), (7, None, 7, 7), (None, 12, 7, 7)],
    ids=["no-cursor-starts-at-head", "after-wins-over-cursor", "after-equal-to-head", "cursor-capped-at-head"],
)
def test_start_positions(after: int | None, cursor: int | None, head: int, start: int) -> None:
    """An explicit `after` wins (no cursor is read); else the cursor, capped at the head; else the head."""
    s = session()
    message: dict[str, Any] = {"type": "subscribe", "projectId": "p"}
    if after is not None:
        message["after"] = after
    (find,) = send(s, **message)
    assert isinstance(find, FindStart) and find.cursor == (after is None)
    s.found(find.ticket, head=head, cursor=cursor)
    assert s.take()[-1] == Connect("p", after=start, head=head)


def test_after_beyond_the_head_and_a_missing_project_are_refused() -> None:
    """`after` > head is `invalid_cursor`, an unknown project `not_found`; neither subscribes."""
    s = session()
    (find,) = send(s, type="subscribe", projectId="p", after=5)
    s.found(find.ticket, head=4, cursor=None)
    assert s.take() == [Refuse(ErrorCode.INVALID_CURSOR, "after 5 is beyond the head 4", "p")]
    (find,) = send(s, type="subscribe", projectId="ghost")
    s.found(find.ticket, head=None, cursor=None)
    assert s.take() == [Refuse(ErrorCode.NOT_FOUND, "no project 'ghost'", "ghost")]
    assert not s.subscribed


@pytest.mark.parametrize(("after", "cursor"), [(3, None), (None, 3)], ids=["after", "cursor"])
def test_a_start_below_the_oldest_kept_is_history_truncated(after: int | None, cursor: int | None) -> None:
    """A start below oldest - 1 (asked, or the cursor) is refused with `history_truncated`, its frame
    carrying `oldest` and `stateSeq` (the head); nothing is subscribed. At oldest - 1 it subscribes."""
    s = session()
    message: dict[str, Any] = {"type": "subscribe", "projectId": "p"}
    if after is not None:
        message["after"] = after
    (find,) = send(s, **message)
    s.found(find.ticket, head=9, cursor=cursor, oldest=5)
    (refusal,) = s.take()
    assert isinstance(refusal, Refuse) and refusal.code is ErrorCode.HISTORY_TRUNCATED
    frame = json.loads(refusal.frame())
    assert frame.pop("message").startswith("the events after 3 are no longer kept (the oldest kept is 5)")
    assert frame == {"type": "error", "code": "history_truncated", "ref": "p", "oldest": 5, "stateSeq": 9}
    assert not s.subscribed and s.accepting
    (find,) = send(s, type="subscribe", projectId="p", after=4)
    s.found(find.ticket, head=9, cursor=None, oldest=5)
    assert s.take()[-1] == Connect("p", after=4, head=9)


def test_a_stream_without_a_client_id_has_no_cursor_to_read() -> None:
    """An SSE stream without clientId (not durable): the lookup asks for the head only."""
    s = session(durable=False)
    s.subscribe("p")
    (find,) = s.take()
    assert isinstance(find, FindStart) and not find.cursor
    s.found(find.ticket, head=3, cursor=None)
    assert s.take()[-1] == Connect("p", after=3, head=3)


def test_subscribing_needs_the_scope_on_the_project() -> None:
    """A token without `subscribe` on the project is refused before any lookup."""
    s = session(principal=principal(projects=frozenset({"a"}), scopes="subscribe"))
    assert send(s, type="subscribe", projectId="b") == [
        Refuse(ErrorCode.FORBIDDEN, "this token may not subscribe to 'b'", "b")
    ]


def test_the_database_down_during_a_lookup_is_unavailable() -> None:
    s = session()
    (find,) = send(s, type="subscribe", projectId="p")
    s.unavailable(find.ticket)
    assert s.take() == [Refuse(ErrorCode.UNAVAILABLE, "the database is unreachable; retry", "p")]
    assert s.accepting


def test_a_message_after_a_lookup_waits_for_it() -> None:
    """An `unsubscribe` that arrives while the subscribe's lookup is in flight is handled after it, so
    it undoes the subscription rather than racing it."""
    s = session()
    (find,) = send(s, type="subscribe", projectId="p")
    assert send(s, type="unsubscribe", projectId="p") == []
    s.found(find.ticket, head=0, cursor=None)
    effects = s.take()
    assert [type(e) for e in effects] == [Send, Connect, Disconnect, Send]
    assert sent(effects)[-1] == {"type": "unsubscribed", "projectId": "p"}
    assert not s.subscribed


# --- publishing: pipelined, answered in order ---------------------------------------------------------


def test_publishes_are_pipelined_and_answered_in_the_order_sent() -> None:
    """Three publishes become three appends at once; their answers go out in the order sent, even when
    the commits land in another order; a ping after them is answered after them."""
    s = session()
    appends = [e for i in range(3) for e in send(s, **publish("p", f"m{i}"))]
    assert [a.message_id for a in appends if isinstance(a, Append)] == ["m0", "m1", "m2"]
    assert s.accepting
    assert send(s, type="ping", ts=7) == []
    assert not s.accepting  # the ping waits for the publishes before it
    tickets = [a.ticket for a in appends if isinstance(a, Append)]
    s.appended(tickets[2], (stored("p", 3, "m2"), True))
    s.appended(tickets[1], (stored("p", 2, "m1"), True))
    assert s.take() == []  # m0 has not landed: nothing may be answered yet
    s.appended(tickets[0], (stored("p", 1, "m0"), True))
    assert sent(s.take()) == [
        {"type": "published", "projectId": "p", "messageId": "m0", "seq": 1},
        {"type": "published", "projectId": "p", "messageId": "m1", "seq": 2},
        {"type": "published", "projectId": "p", "messageId": "m2", "seq": 3},
        {"type": "pong", "ts": 7},
    ]
    assert s.accepting


def test_at_most_max_pipelined_publishes_wait_at_once() -> None:
    """The publish past MAX_PIPELINED is appended only once the oldest has landed."""
    s = session()
    appends = [e for i in range(MAX_PIPELINED) for e in send(s, **publish("p", f"m{i}"))]
    assert len(appends) == MAX_PIPELINED and s.accepting
    assert send(s, **publish("p", "late")) == []
    assert not s.accepting
    first = appends[0]
    assert isinstance(first, Append)
    s.appended(first.ticket, (stored("p", 1, "m0"), True))
    effects = s.take()
    assert sent(effects)[0]["messageId"] == "m0"
    assert isinstance(effects[-1], Append) and effects[-1].message_id == "late"
    assert s.accepting


def test_an_invalid_or_forbidden_publish_is_answered_after_the_publishes_before_it() -> None:
    """Bad data is `invalid_data`, a project outside the token `forbidden`; each names the messageId
    as `ref` and comes after the answers to the publishes sent before it."""
    s = session(principal=principal(projects=frozenset({"p"}), scopes="publish"))
    (append,) = send(s, **publish("p", "ok"))
    assert isinstance(append, Append)
    bad = {**publish("p", "bad"), "data": {**RUN, "progress": "7"}}
    assert send(s, **bad) == []
    s.appended(append.ticket, (stored("p", 1, "ok"), True))
    answers = sent(s.take())
    assert [a["type"] for a in answers] == ["published", "error"]
    assert answers[1]["code"] == "invalid_data" and answers[1]["ref"] == "bad"
    assert "data.progress" in answers[1]["message"]
    assert sent(send(s, **publish("q", "elsewhere"))) == [
        {"type": "error", "code": "forbidden", "message": "this token may not publish to 'q'", "ref": "elsewhere"}
    ]


@pytest.mark.parametrize(
    ("failure", "code"),
    [(ProjectNotFound("p"), ErrorCode.NOT_FOUND), (DatabaseUnavailable("down"), ErrorCode.UNAVAILABLE)],
)
def test_a_failed_append_is_an_error_naming_the_message(failure: Exception, code: ErrorCode) -> None:
    s = session()
    (append,) = send(s, **publish("p", "m1"))
    assert isinstance(append, Append)
    s.appended(append.ticket, failure)
    (refusal,) = s.take()
    assert isinstance(refusal, Refuse) and refusal.code == code and refusal.ref == "m1"


def test_an_unexpected_append_failure_closes_1001(caplog: pytest.LogCaptureFixture) -> None:
    """A bug while appending is logged and closes with 1001 (retry): the client resumes rather than
    waits for an answer that will not come. Nothing more is asked once closed."""
    s = session()
    (append,) = send(s, **publish("p", "m1"))
    assert isinstance(append, Append)
    s.appended(append.ticket, RuntimeError("a bug"))
    assert s.take() == [Close(CloseCode.GOING_AWAY, "internal error; reconnect and resume")]
    assert "publishing failed" in caplog.text
    assert s.closed and not s.accepting
    assert send(s, type="ping") == []


# --- acks ---------------------------------------------------------------------------------------------


def test_an_ack_needs_a_subscription_on_this_connection() -> None:
    s = session()
    assert send(s, type="ack", projectId="p", seq=1) == [
        Refuse(ErrorCode.NOT_SUBSCRIBED, "not subscribed to 'p' on this connection", "p")
    ]


def test_an_ack_within_the_head_advances_the_cursor_and_one_beyond_it_is_refused() -> None:
    s = session()
    subscribed(s, "p", head=3)
    (check,) = send(s, type="ack", projectId="p", seq=3)
    assert check == CheckAck(check.ticket, "p", 3) and not s.accepting
    s.ack_checked(check.ticket, head=3)
    assert s.take() == [Ack("p", 3)]
    (check,) = send(s, type="ack", projectId="p", seq=9)
    assert isinstance(check, CheckAck)
    s.ack_checked(check.ticket, head=4)
    assert s.take() == [Refuse(ErrorCode.INVALID_ACK, "seq 9 is beyond the head 4", "p")]


def test_an_ack_while_the_database_is_down_says_ack_again() -> None:
    s = session()
    subscribed(s, "p")
    (check,) = send(s, type="ack", projectId="p", seq=0)
    assert isinstance(check, CheckAck)
    s.unavailable(check.ticket)
    assert s.take() == [Refuse(ErrorCode.UNAVAILABLE, "the database is unreachable; ack again", "p")]


# --- token refresh -------------------------------------------------------------------------------------


def test_a_refreshed_token_drops_the_projects_it_no_longer_grants() -> None:
    """`auth` with a narrower token of the same user: the connection acts with it from now on, and
    each subscription it does not grant is dropped with `forbidden` and `unsubscribed`."""
    s = session()
    subscribed(s, "a")
    subscribed(s, "b")
    effects = send(s, type="auth", token="same-user-fewer-projects")
    assert effects[0] == Reauthorize(TOKENS["same-user-fewer-projects"])
    assert effects[1:] == [
        Disconnect("b"),
        Refuse(ErrorCode.FORBIDDEN, "the new token does not grant this project", "b"),
        Send('{"type":"unsubscribed","projectId":"b"}'),
    ]
    assert list(s.subscribed) == ["a"]


@pytest.mark.parametrize(
    ("token", "reason"),
    [("garbage", "invalid token: not one of ours"), ("another-user", "a refreshed token must be for the same user")],
)
def test_a_bad_refresh_closes_4401(token: str, reason: str) -> None:
    s = session()
    assert send(s, type="auth", token=token) == [Close(CloseCode.AUTH, reason)]
    assert s.closed


# --- malformed input and the rate limit ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ref", "words"),
    [
        (None, None, "binary frames"),
        ("{not json", None, "not valid JSON"),
        ("[1]", None, "JSON object"),
        ('{"messageId":"m9","projectId":"p"}', "m9", "string type"),
        ('{"type":"subscribe","projectId":"bad id!"}', "bad id!", "projectId"),
    ],
    ids=["binary", "not-json", "not-an-object", "no-type", "bad-field"],
)
def test_malformed_frames_are_invalid_frame_and_name_their_ref(text: str | None, ref: str | None, words: str) -> None:
    s = session()
    s.receive(text)
    (refusal,) = s.take()
    assert isinstance(refusal, Refuse) and refusal.code == ErrorCode.INVALID_FRAME
    assert refusal.ref == ref and words in refusal.message
    assert s.accepting


def test_unknown_types_ping_and_pong() -> None:
    s = session()
    assert send(s, type="hello", projectId="p") == [Refuse(ErrorCode.UNKNOWN_TYPE, "unknown message type 'hello'", "p")]
    assert sent(send(s, type="ping", ts=1.5)) == [{"type": "pong", "ts": 1.5}]
    assert send(s, type="pong", ts=2) == []


def test_the_rate_limit_drops_messages_then_closes_1008() -> None:
    """Past the burst, each message is dropped with `rate_limited`; more than 50 rejections within the
    window close the connection with 1008."""
    now = [0.0]
    s = session(rate=RateLimit(rate=1, burst=2, clock=lambda: now[0]))
    assert [type(e) for e in send(s, type="ping") + send(s, type="ping")] == [Send, Send]
    for _ in range(50):
        assert send(s, type="ping") == [
            Refuse(ErrorCode.RATE_LIMITED, "too many messages; slow down (this one was dropped)", None)
        ]
    assert send(s, type="ping") == [Close(CloseCode.POLICY_VIOLATION, "inbound rate limit exceeded")]
    assert s.closed
