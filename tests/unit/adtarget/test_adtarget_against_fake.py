"""The typed client against the AdTarget fake: the models read what the fake answers,
each 404 and the header-over-body rule hold over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from bot.adtarget import errors
from bot.adtarget.client import AdTargetClient
from bot.adtarget.models import (
    ConversionAnswer,
    ConversionRequest,
    InviteAnswer,
    InviteRequest,
    LeadEventRequest,
    SuccessAnswer,
    UpdateFbpRequest,
    ValueRequest,
    VisitAnswer,
    VisitRequest,
)
from bot.simulators.adtarget import FakeAdTarget
from tests.unit.adtarget.sending import send

CHANNELS = [
    {"channelId": "ch_1", "telegramChannelId": "-1001234567890", "title": "One", "funnelOrder": 1}
]


@pytest.fixture
async def fake() -> AsyncIterator[FakeAdTarget]:
    async with FakeAdTarget(channels=CHANNELS) as server:
        yield server


@pytest.fixture
async def client(fake: FakeAdTarget) -> AsyncIterator[AdTargetClient]:
    api = AdTargetClient(fake.url, SecretStr(fake.API_KEY), timeout=5.0)
    yield api
    await api.aclose()


async def test_every_endpoint_round_trip(fake: FakeAdTarget, client: AdTargetClient) -> None:
    visit = await send(
        client,
        VisitRequest(href="https://a.example/l?fbclid=x", client_ip="198.51.100.7").call(
            "203.0.113.42", "Header/2"
        ),
        "v1",
        VisitAnswer,
    )
    # The header wins over the body: the fake (as AdTarget) stored the header's values.
    assert fake.visits[0]["clientIp"] == "203.0.113.42"
    assert fake.visits[0]["userAgent"] == "Header/2"
    assert visit.cookies is not None
    assert visit.cookies.temp_id.value == visit.temp_id

    fbp = UpdateFbpRequest(temp_id=visit.temp_id, fbp="fb.1.2.3")
    assert (await send(client, fbp.call(), "f1", SuccessAnswer)).success is True
    invite = InviteRequest(temp_id=visit.temp_id, channel_id="-1001234567890")
    assert (await send(client, invite.call(), "i1", InviteAnswer)).invite_link

    conversion = await send(
        client,
        ConversionRequest(
            telegram_user_id=42, channel_id="-1001234567890", event_type="Lead", fbc="fb.1.1.x"
        ).call(),
        "c1",
        ConversionAnswer,
    )
    assert conversion.dispatched is True
    assert conversion.cold_lead is True
    event = await send(
        client,
        LeadEventRequest(event_type="Purchase", value=10, currency="EUR").call(42),
        "e1",
        ConversionAnswer,
    )
    assert event.cold_lead is False
    value = await send(
        client,
        ValueRequest(value=12.5, currency="EUR").call(42, event.conversion_id),
        "x1",
        SuccessAnswer,
    )
    assert value.success is True

    lead = await client.get_lead(42)
    assert [(c.channel_id, c.event_type) for c in lead.conversions] == [
        ("ch_1", "Lead"),
        ("ch_1", "Purchase"),
    ]
    assert lead.conversions[1].event_value == 12.5
    (channel,) = await client.list_channels()
    assert (channel.channel_id, channel.funnel_order) == ("ch_1", 1)


async def test_404s_are_typed(client: AdTargetClient) -> None:
    with pytest.raises(errors.LeadNotFound):
        await client.get_lead(7)
    with pytest.raises(errors.LeadNotFound):
        await send(client, LeadEventRequest(event_type="Lead").call(7), "a", ConversionAnswer)
    await send(
        client,
        ConversionRequest(telegram_user_id=7, channel_id="ch_1", event_type="Lead").call(),
        "b",
        ConversionAnswer,
    )
    with pytest.raises(errors.ConversionNotFound):
        await send(
            client, ValueRequest(value=1, currency="EUR").call(7, "nope"), "c", SuccessAnswer
        )
    with pytest.raises(errors.ChannelNotFound):
        await send(client, InviteRequest(temp_id="t", channel_id="-1009").call(), "d", InviteAnswer)


async def test_auth_billing_and_rate_limit_are_typed(
    fake: FakeAdTarget, client: AdTargetClient
) -> None:
    fake.fail(402, "SUBSCRIPTION_INACTIVE", count=1)
    with pytest.raises(errors.SubscriptionInactive):
        await client.list_channels()
    fake.set_rate(60, 1)
    await client.list_channels()
    with pytest.raises(errors.RateLimited) as limited:
        await client.list_channels()
    assert limited.value.retry_after is not None
    assert limited.value.retry_after >= 1
    fake.revoke_key()
    with pytest.raises(errors.AuthError) as revoked:
        await client.get_lead(1)
    assert revoked.value.code == "REVOKED_KEY"
