from gateway.token_bucket import TokenBucket


def test_burst_then_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0)
    assert [bucket.take(0) for _ in range(4)] == [True, True, True, False]
    assert round(bucket.wait_time(0), 3) == 0.1
    assert bucket.take(0.1) is True
    assert bucket.take(0.1) is False


def test_never_more_than_burst() -> None:
    bucket = TokenBucket(rate=10, burst=2, now=0)
    assert bucket.is_full(100)
    assert [bucket.take(100) for _ in range(3)] == [True, True, False]
