"""The names a node takes from its user, checked: topics (and the SUB channel each becomes) and
service names. Pure: no IO."""

from __future__ import annotations

from ._wire import EVENT_CHANNEL, MAX_NAME_SIZE, MAX_TOPIC_SIZE


def topic_channel(topic: str) -> bytes:
    """``b"E" + topic``: the SUB subscription for the topic prefix `topic`, and the start of every
    published frame for that topic. Raises `TypeError` or `ValueError` for a bad topic."""
    if not isinstance(topic, str):
        raise TypeError(f"topic must be str, not {type(topic).__name__}")
    if "\x00" in topic:
        raise ValueError("a topic cannot contain NUL")
    channel = EVENT_CHANNEL + topic.encode()
    if len(channel) - 1 > MAX_TOPIC_SIZE:
        raise ValueError(f"topic is longer than {MAX_TOPIC_SIZE} bytes")
    return channel


def check_service(service: str) -> None:
    """Check a service name as this node takes it from its user (`push`, `work`): 1 to
    `MAX_NAME_SIZE` bytes of UTF-8. Raises `TypeError` or `ValueError`."""
    if not isinstance(service, str):
        raise TypeError(f"service must be str, not {type(service).__name__}")
    if not service or len(service.encode()) > MAX_NAME_SIZE:
        raise ValueError(f"service name must be 1 to {MAX_NAME_SIZE} bytes")
