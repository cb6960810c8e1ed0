"""Reading a getUpdates answer one update at a time, as tolerant as real servers need.

aiogram validates a getUpdates answer as one list: a single update it cannot
read fails the whole answer, and polling asks for the same offset again until
Telegram drops that update (24 h). Real servers send such updates. An older
self-hosted Bot API server omits rights that aiogram 3.31 requires
(`can_send_welcome_messages`, `can_react_to_messages`: aiogram#1812); a newer
one may send a ChatMember status aiogram does not know.

So the batch is validated as a whole first (the usual case costs nothing
more), and when that fails, each update on its own. For the three updates the
bridge lives on (`chat_member`, `my_chat_member`, `chat_join_request`) an update
that aiogram rejects is read again through a tolerant model of just what the
bridge needs: chat, user and `is_bot`, the old and new status and `is_member`,
`invite_link`, `via_join_request`, `via_chat_folder_invite_link` and `date`.
What aiogram requires beyond that is filled in neutrally (a right not sent is
a right not granted), and an unknown status reads as "left": not a member. An
update that even that cannot read is `Unreadable`: kept with its error, shown,
and skipped; it never holds back another.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiogram import Bot
from aiogram.types import (
    ChatMemberAdministrator,
    ChatMemberBanned,
    ChatMemberLeft,
    ChatMemberMember,
    ChatMemberOwner,
    ChatMemberRestricted,
    Update,
)
from aiogram.types.update import UpdateTypeLookupError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

log = logging.getLogger(__name__)

# The update kinds read again through the tolerant model when aiogram rejects them.
MEMBERSHIP_KINDS = frozenset({"chat_member", "my_chat_member", "chat_join_request"})
# How many of a validation error's problems are kept (each is a field path and a reason).
ERRORS_KEPT = 3

_UPDATES = TypeAdapter(list[Update])
_MEMBER_CLASSES: dict[str, type[BaseModel]] = {
    str(cls.model_fields["status"].default.value): cls
    for cls in (
        ChatMemberOwner,
        ChatMemberAdministrator,
        ChatMemberMember,
        ChatMemberRestricted,
        ChatMemberLeft,
        ChatMemberBanned,
    )
}
# What aiogram requires and an older server may not send: the neutral value.
_NEUTRAL: dict[Any, Any] = {bool: False, int: 0, str: "", datetime.datetime: 0}


@dataclass(frozen=True, slots=True)
class Unreadable:
    """An update that could not be read: stored, shown and skipped."""

    update_id: int
    kind: str
    raw: dict[str, Any]
    error: str  # field paths and reasons, never the values


@dataclass(slots=True)
class ReadBatch:
    """One getUpdates answer, read update by update."""

    updates: list[Update] = field(default_factory=list)  # readable, in order
    unreadable: list[Unreadable] = field(default_factory=list)
    raw: dict[int, dict[str, Any]] = field(default_factory=dict)  # every update, by id
    # The highest update_id in the answer, readable or not: the next offset is this + 1.
    last_update_id: int | None = None


def update_kind(raw: dict[str, Any]) -> str:
    """The update's kind as Telegram names it: its one key besides update_id."""
    return next((key for key in raw if key != "update_id"), "unknown")


def describe(error: ValidationError) -> str:
    """`path.to.field: reason` for the first few problems; no input values (they
    may carry a person's data, and this text is shown to admins and in /healthz)."""
    problems = error.errors(include_url=False, include_input=False, include_context=False)
    text = "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or '(update)'}: {problem['msg']}"
        for problem in problems[:ERRORS_KEPT]
    )
    if len(problems) > ERRORS_KEPT:
        text += f"; and {len(problems) - ERRORS_KEPT} more"
    return text


class UpdateReader:
    """Reads raw updates into aiogram's `Update`, falling back to the tolerant model."""

    def __init__(self) -> None:
        # Unknown statuses are logged once per process, not once per update.
        self._unknown_statuses: set[str] = set()

    def read_batch(self, raw_updates: Sequence[Any], bot: Bot) -> ReadBatch:
        batch = ReadBatch()
        items = [r for r in raw_updates if isinstance(r, dict) and _update_id(r) is not None]
        if len(items) < len(raw_updates):
            # No update_id: nothing to store it under, and nothing to confirm.
            log.error(
                "getUpdates answer held %d item(s) without an update_id; ignored",
                len(raw_updates) - len(items),
            )
        if not items:
            return batch
        batch.raw = {int(r["update_id"]): r for r in items}
        batch.last_update_id = max(batch.raw)
        try:
            # The usual case: the whole answer in one pass, as aiogram would.
            updates = _UPDATES.validate_python(items, context={"bot": bot})
            for update in updates:
                _ = update.event_type  # an update of a kind aiogram does not know raises
        except (ValidationError, UpdateTypeLookupError):
            pass
        else:
            batch.updates = updates
            return batch
        for raw in items:
            read = self.read_one(raw, bot)
            if isinstance(read, Unreadable):
                batch.unreadable.append(read)
            else:
                batch.updates.append(read)
        return batch

    def read_one(self, raw: dict[str, Any], bot: Bot) -> Update | Unreadable:
        update_id = int(raw.get("update_id", 0))
        kind = update_kind(raw)
        try:
            update = Update.model_validate(raw, context={"bot": bot})
        except ValidationError as error:
            if kind not in MEMBERSHIP_KINDS:
                return Unreadable(update_id, kind, raw, describe(error))
            first_error = error
        else:
            try:
                _ = update.event_type
            except UpdateTypeLookupError:
                return Unreadable(update_id, kind, raw, f"{kind}: not an update kind aiogram knows")
            return update
        try:
            tolerant = self._tolerant(kind, raw[kind])
            update = Update.model_validate(
                {"update_id": update_id, kind: tolerant}, context={"bot": bot}
            )
        except ValidationError:
            # The tolerant read failed too: report what aiogram found, the fuller story.
            return Unreadable(update_id, kind, raw, describe(first_error))
        log.info(
            "update %d (%s) read by the tolerant reader: %s",
            update_id,
            kind,
            describe(first_error),
        )
        return update

    def _tolerant(self, kind: str, payload: Any) -> dict[str, Any]:
        if kind == "chat_join_request":
            request = _JoinRequest.model_validate(payload)
            return request.aiogram_shape()
        change = _MemberChange.model_validate(payload)
        return change.aiogram_shape(self._member)

    def _member(self, member: _Member) -> dict[str, Any]:
        cls = _MEMBER_CLASSES.get(member.status)
        status = member.status
        if cls is None:
            if status not in self._unknown_statuses:
                self._unknown_statuses.add(status)
                log.warning("unknown chat member status %r: read as not a member", status)
            cls, status = ChatMemberLeft, "left"
        shape: dict[str, Any] = {"status": status, "user": member.user.aiogram_shape()}
        sent = member.model_extra or {}
        if member.is_member is not None:
            sent = {**sent, "is_member": member.is_member}
        for name, spec in cls.model_fields.items():
            if name in shape or not spec.is_required():
                continue
            neutral = _NEUTRAL.get(spec.annotation)
            value = sent.get(name)
            if neutral is not None and isinstance(value, type(neutral)):
                shape[name] = value
            elif neutral is not None:
                shape[name] = neutral
        return shape


def _update_id(raw: dict[str, Any]) -> int | None:
    value = raw.get("update_id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ---- the tolerant model: what the bridge needs, nothing it can do without -----------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _User(_Lenient):
    id: int
    is_bot: bool = False
    first_name: str = ""
    username: str | None = None

    def aiogram_shape(self) -> dict[str, Any]:
        shape: dict[str, Any] = {
            "id": self.id,
            "is_bot": self.is_bot,
            "first_name": self.first_name,
        }
        if self.username is not None:
            shape["username"] = self.username
        return shape


# Stands in for a link's creator when a server leaves it out; the bridge matches
# links by their URL alone.
_NOBODY = _User(id=0)


class _Chat(_Lenient):
    id: int
    # Only tracked chats count, and those are known by id: a missing type is harmless.
    type: str = "channel"
    title: str | None = None
    username: str | None = None

    def aiogram_shape(self) -> dict[str, Any]:
        shape: dict[str, Any] = {"id": self.id, "type": self.type}
        shape.update(
            {
                key: value
                for key, value in (("title", self.title), ("username", self.username))
                if value
            }
        )
        return shape


class _Member(_Lenient):
    # Extra fields kept: the rights aiogram requires are taken from them when sent.
    model_config = ConfigDict(extra="allow")
    user: _User
    status: str
    is_member: bool | None = None


class _Link(_Lenient):
    invite_link: str
    creator: _User | None = None
    creates_join_request: bool = False
    is_primary: bool = False
    is_revoked: bool = False
    name: str | None = None

    def aiogram_shape(self) -> dict[str, Any]:
        shape: dict[str, Any] = {
            "invite_link": self.invite_link,
            "creator": (self.creator or _NOBODY).aiogram_shape(),
            "creates_join_request": self.creates_join_request,
            "is_primary": self.is_primary,
            "is_revoked": self.is_revoked,
        }
        if self.name is not None:
            shape["name"] = self.name
        return shape


class _MemberChange(_Lenient):
    chat: _Chat
    from_user: _User = Field(alias="from")
    date: int
    old_chat_member: _Member
    new_chat_member: _Member
    invite_link: _Link | None = None
    via_join_request: bool = False
    via_chat_folder_invite_link: bool = False

    def aiogram_shape(self, member: Any) -> dict[str, Any]:
        shape: dict[str, Any] = {
            "chat": self.chat.aiogram_shape(),
            "from": self.from_user.aiogram_shape(),
            "date": self.date,
            "old_chat_member": member(self.old_chat_member),
            "new_chat_member": member(self.new_chat_member),
        }
        if self.invite_link is not None:
            shape["invite_link"] = self.invite_link.aiogram_shape()
        # The Bot API sends these flags only when true.
        if self.via_join_request:
            shape["via_join_request"] = True
        if self.via_chat_folder_invite_link:
            shape["via_chat_folder_invite_link"] = True
        return shape


class _JoinRequest(_Lenient):
    chat: _Chat
    from_user: _User = Field(alias="from")
    # Bot API 6.5; older servers leave it out, and it is the requester's own id.
    user_chat_id: int | None = None
    date: int
    bio: str | None = None
    invite_link: _Link | None = None

    def aiogram_shape(self) -> dict[str, Any]:
        shape: dict[str, Any] = {
            "chat": self.chat.aiogram_shape(),
            "from": self.from_user.aiogram_shape(),
            "user_chat_id": self.from_user.id if self.user_chat_id is None else self.user_chat_id,
            "date": self.date,
        }
        if self.invite_link is not None:
            shape["invite_link"] = self.invite_link.aiogram_shape()
        return shape
