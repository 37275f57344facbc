"""Which channels an event goes out on."""

from __future__ import annotations

from hypothesis import given, strategies as st

from clarion.domain.channels import DEFAULT_CHANNELS, Channel
from clarion.domain.notifications import EventSpec, Recipients
from clarion.domain.routing import channels_for

channel_lists = st.lists(st.sampled_from(list(Channel)), max_size=10)


def spec(channels: tuple[Channel, ...] | None) -> EventSpec:
    return EventSpec(type="order.placed", recipients=Recipients(users=("u1",)), channels=channels)


def test_an_event_naming_no_channels_gets_the_defaults() -> None:
    assert channels_for(spec(None)) == DEFAULT_CHANNELS == (Channel.WEBSOCKET,)


def test_an_event_naming_an_empty_list_still_gets_the_inbox() -> None:
    assert channels_for(spec(())) == (Channel.WEBSOCKET,)


def test_an_event_naming_push_channels_keeps_the_inbox_first() -> None:
    assert channels_for(spec((Channel.APNS, Channel.FCM))) == (
        Channel.WEBSOCKET,
        Channel.APNS,
        Channel.FCM,
    )


def test_a_channel_named_twice_goes_out_once() -> None:
    named = (Channel.EMAIL, Channel.WEBSOCKET, Channel.EMAIL, Channel.APNS)
    assert channels_for(spec(named)) == (Channel.WEBSOCKET, Channel.EMAIL, Channel.APNS)


@given(channel_lists)
def test_channels_for_always_keeps_websocket(named: list[Channel]) -> None:
    assert Channel.WEBSOCKET in channels_for(spec(tuple(named)))


@given(channel_lists)
def test_channels_for_names_each_channel_once(named: list[Channel]) -> None:
    result = channels_for(spec(tuple(named)))
    assert len(result) == len(set(result))


@given(channel_lists)
def test_channels_for_adds_nothing_but_the_inbox(named: list[Channel]) -> None:
    assert set(channels_for(spec(tuple(named)))) == {Channel.WEBSOCKET, *named}


@given(channel_lists)
def test_channels_for_keeps_the_order_the_event_named(named: list[Channel]) -> None:
    result = channels_for(spec(tuple(named)))
    others = [c for c in result if c is not Channel.WEBSOCKET]
    assert others == list(dict.fromkeys(c for c in named if c is not Channel.WEBSOCKET))


def test_the_api_names_every_channel_and_the_push_alias() -> None:
    from typing import get_args

    from clarion.domain.channels import PUSH_ALIAS, Channel
    from clarion.entrypoints.api.schemas import ChannelName

    assert set(get_args(ChannelName)) == {str(c) for c in Channel} | {PUSH_ALIAS}
