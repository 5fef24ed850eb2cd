from gateway.services.typing import TypingTracker


def test_start_is_new_once_then_refreshes() -> None:
    tracker = TypingTracker(timeout=5)
    assert tracker.start(("a", "b"), now=0) is True
    assert tracker.start(("a", "b"), now=1) is False
    assert tracker.next_deadline() == 6


def test_expiry_uses_the_latest_refresh() -> None:
    tracker = TypingTracker(timeout=5)
    tracker.start(("a", "b"), now=0)
    tracker.start(("a", "b"), now=3)
    assert tracker.expire(now=5) == []
    assert tracker.expire(now=8) == [("a", "b")]
    assert len(tracker) == 0 and tracker.next_deadline() is None


def test_stop_cancels_the_expiry() -> None:
    tracker = TypingTracker(timeout=5)
    tracker.start(("a", "b"), now=0)
    assert tracker.stop(("a", "b")) is True
    assert tracker.stop(("a", "b")) is False
    assert tracker.expire(now=10) == []


def test_drop_returns_the_pairs_the_sid_was_sending() -> None:
    # Pairs are (sender sid, target username): a target going away leaves them to expire.
    tracker = TypingTracker(timeout=5)
    tracker.start(("a", "bob"), now=0)
    tracker.start(("c", "alice"), now=0)
    tracker.start(("c", "dave"), now=0)
    assert tracker.drop("a") == [("a", "bob")]
    assert len(tracker) == 2
    assert sorted(tracker.expire(now=10)) == [("c", "alice"), ("c", "dave")]
