"""The update reader on its own: real payloads, poisoned batches, generated damage."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest
from aiogram import Bot
from aiogram.types import Update
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.polling.reader import ERRORS_KEPT, Unreadable, UpdateReader, update_kind
from tests.harness import PAYLOADS
from tests.harness import load_payload as load

# Member fields the bridge relies on; every other field may be missing or new.
ESSENTIAL = ("user", "status", "is_member")


@pytest.fixture
def bot() -> Bot:
    return Bot("42:TEST")


def test_the_corpus_is_there() -> None:
    # The tests below are parametrized over it: an empty glob would make them vacuous.
    assert len(PAYLOADS) >= 10


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: p.stem)
def test_every_real_payload_reads_with_what_the_bridge_needs(path: Path, bot: Bot) -> None:
    raw = load(path)
    kind = update_kind(raw)
    read = UpdateReader().read_one(raw, bot)
    assert isinstance(read, Update), read
    assert read.update_id == raw["update_id"]
    assert read.event_type == kind
    event = getattr(read, kind)
    sent = raw[kind]
    assert event.chat.id == sent["chat"]["id"]
    assert event.from_user.id == sent["from"]["id"]
    assert int(event.date.timestamp()) == sent["date"]
    if "invite_link" in sent:
        assert event.invite_link.invite_link == sent["invite_link"]["invite_link"]
    else:
        assert event.invite_link is None
    if kind != "chat_join_request":
        for side in ("old_chat_member", "new_chat_member"):
            member = getattr(event, side)
            assert member.status == sent[side]["status"]
            assert member.user.id == sent[side]["user"]["id"]
            assert member.user.is_bot == sent[side]["user"]["is_bot"]
            if "is_member" in sent[side]:
                assert member.is_member == sent[side]["is_member"]
            if "can_invite_users" in sent[side]:
                assert member.can_invite_users == sent[side]["can_invite_users"]


def test_a_poisoned_update_is_set_aside_and_the_rest_of_the_batch_reads(bot: Bot) -> None:
    good = load(PAYLOADS[-1])
    poisoned = {"update_id": good["update_id"] + 1, "chat_member": {"chat": {"id": "x"}}}
    later = {**copy.deepcopy(good), "update_id": good["update_id"] + 2}
    batch = UpdateReader().read_batch([good, poisoned, later], bot)
    assert [u.update_id for u in batch.updates] == [good["update_id"], later["update_id"]]
    [bad] = batch.unreadable
    assert bad.update_id == poisoned["update_id"]
    assert bad.kind == "chat_member"
    assert bad.raw == poisoned
    assert "chat_member.chat.id" in bad.error
    assert batch.last_update_id == later["update_id"]  # the offset moves past all three
    assert set(batch.raw) == {good["update_id"], poisoned["update_id"], later["update_id"]}


def test_a_batch_aiogram_accepts_is_read_in_one_pass(bot: Bot) -> None:
    update = {
        "update_id": 7,
        "message": {
            "message_id": 1,
            "date": 1700000000,
            "chat": {"id": 5, "type": "private", "first_name": "A"},
            "from": {"id": 5, "is_bot": False, "first_name": "A"},
            "text": "/stats",
        },
    }
    batch = UpdateReader().read_batch([update], bot)
    assert [u.message.text for u in batch.updates if u.message] == ["/stats"]
    assert batch.unreadable == []
    assert batch.last_update_id == 7


def test_an_update_kind_aiogram_does_not_know_is_unreadable(bot: Bot) -> None:
    batch = UpdateReader().read_batch([{"update_id": 3, "future_thing": {"a": 1}}], bot)
    assert batch.updates == []
    [bad] = batch.unreadable
    assert (bad.update_id, bad.kind) == (3, "future_thing")
    assert batch.last_update_id == 3


def test_items_without_an_update_id_are_ignored(bot: Bot, caplog: pytest.LogCaptureFixture) -> None:
    good = load(PAYLOADS[-1])
    batch = UpdateReader().read_batch(["junk", {"chat_member": {}}, good], bot)
    assert [u.update_id for u in batch.updates] == [good["update_id"]]
    assert "without an update_id" in caplog.text


def test_an_unknown_status_reads_as_not_a_member_and_is_logged_once(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    raw = load(PAYLOADS[-1])
    raw["chat_member"]["new_chat_member"] = {
        "status": "guest",
        "user": raw["chat_member"]["new_chat_member"]["user"],
        "is_member": True,
    }
    reader = UpdateReader()
    caplog.set_level(logging.INFO, logger="bot.polling.reader")
    for update_id in (1, 2):
        read = reader.read_one({**raw, "update_id": update_id}, bot)
        assert isinstance(read, Update)
        assert read.chat_member is not None
        assert read.chat_member.new_chat_member.status == "left"
    assert caplog.text.count("unknown chat member status 'guest'") == 1


def test_the_error_names_fields_never_values(bot: Bot) -> None:
    raw = load(PAYLOADS[-1])
    raw["chat_member"]["date"] = "Secret Name"
    raw["chat_member"]["chat"] = {"title": "Secret Title"}
    raw["chat_member"]["from"] = "Secret From"
    raw["chat_member"]["old_chat_member"] = 5
    read = UpdateReader().read_one(raw, bot)
    assert isinstance(read, Unreadable)
    assert "Secret" not in read.error
    assert "chat_member.chat" in read.error
    assert read.error.count(";") == ERRORS_KEPT  # three problems, then "and N more"
    assert read.error.endswith("more")


_FIELD_NAMES = sorted(
    {
        key
        for path in PAYLOADS
        for kind, event in load(path).items()
        if kind != "update_id"
        for side in ("old_chat_member", "new_chat_member")
        for key in event.get(side, {})
        if key not in ESSENTIAL
    }
)
_EXTRA = st.dictionaries(
    st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
    st.one_of(st.booleans(), st.integers(), st.text(max_size=5), st.none()),
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from([p for p in PAYLOADS if "chat_member" in p.read_text()]),
    dropped=st.sets(st.sampled_from(_FIELD_NAMES)),
    extra=_EXTRA,
)
def test_member_updates_survive_any_missing_or_new_member_field(
    path: Path, dropped: set[str], extra: dict[str, Any]
) -> None:
    raw = load(path)
    kind = update_kind(raw)
    for side in ("old_chat_member", "new_chat_member"):
        member = raw[kind][side]
        extra_only = {k: v for k, v in extra.items() if k not in member and k not in ESSENTIAL}
        raw[kind][side] = {k: v for k, v in member.items() if k not in dropped} | extra_only
    read = UpdateReader().read_one(raw, Bot("42:TEST"))
    assert isinstance(read, Update), read
    event = getattr(read, kind)
    assert event.new_chat_member.status == raw[kind]["new_chat_member"]["status"]
    assert event.new_chat_member.user.id == raw[kind]["new_chat_member"]["user"]["id"]


@settings(max_examples=200, deadline=None)
@given(
    payload=st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(["chat", "from", "id", "status", "user", "date", "invite_link"]),
                inner,
                max_size=4,
            )
        ),
        max_leaves=12,
    ),
    kind=st.sampled_from(["chat_member", "my_chat_member", "chat_join_request", "message"]),
)
def test_no_payload_makes_the_reader_raise(payload: Any, kind: str) -> None:
    batch = UpdateReader().read_batch([{"update_id": 1, kind: payload}], Bot("42:TEST"))
    assert len(batch.updates) + len(batch.unreadable) == 1
    assert batch.last_update_id == 1
