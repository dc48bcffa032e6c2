import time
import uuid

from service import ids


def test_uuid7_is_an_rfc_9562_version_7_uuid_whose_time_is_now() -> None:
    before = time.time_ns() // 1_000_000
    made = [ids.uuid7() for _ in range(200)]
    after = time.time_ns() // 1_000_000
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after
    assert len(set(made)) == len(made)


def test_uuid7s_sort_in_the_order_of_their_milliseconds() -> None:
    first = ids.uuid7()
    time.sleep(0.002)
    assert ids.uuid7() > first


def test_request_ids_are_32_hex_digits_and_never_repeat() -> None:
    made = {ids.request_id() for _ in range(1000)}
    assert len(made) == 1000
    assert all(len(r) == 32 and int(r, 16) >= 0 for r in made)
