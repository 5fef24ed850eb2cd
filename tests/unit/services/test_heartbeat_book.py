from gateway.services.heartbeat import HeartbeatBook


def book() -> HeartbeatBook:
    return HeartbeatBook(warn_after=2, max_missed=4)


def test_acked_round_counts_no_miss() -> None:
    b = book()
    b.add("a")
    b.open_round("r1")
    assert b.ack("a", "r1") is True
    result = b.close_round()
    assert result.warnings == [] and result.timed_out == []
    assert b.missed("a") == 0


def test_misses_warn_from_warn_after_and_time_out_at_max() -> None:
    b = book()
    b.add("a")
    outcomes = []
    for n in range(4):
        b.open_round(f"r{n}")
        outcomes.append(b.close_round())
    assert [o.warnings for o in outcomes] == [[], [("a", 2)], [("a", 3)], []]
    assert outcomes[-1].timed_out == ["a"]


def test_a_late_ack_of_a_recent_round_resets() -> None:
    b = book()
    b.add("a")
    b.open_round("r1")
    b.close_round()
    b.open_round("r2")
    b.close_round()
    assert b.missed("a") == 2
    assert b.ack("a", "r1") is True
    assert b.missed("a") == 0


def test_unknown_ids_and_strangers_are_refused() -> None:
    b = book()
    b.add("a")
    b.open_round("r1")
    assert b.ack("a", "other") is False
    assert b.ack("stranger", "r1") is False


def test_connections_joining_mid_round_are_not_penalised() -> None:
    b = book()
    b.add("a")
    b.open_round("r1")
    b.add("late")
    b.ack("a", "r1")
    b.close_round()
    assert b.missed("late") == 0


def test_removed_connections_are_forgotten() -> None:
    b = book()
    b.add("a")
    b.open_round("r1")
    b.remove("a")
    assert b.close_round().timed_out == []
    assert len(b) == 0
