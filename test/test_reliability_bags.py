"""Damaged bags: a corrupt message is skipped and counted per topic, too many stop the read
with a BagError naming the topic; MCAP chunks carry CRCs, so a chunk with flipped bytes is skipped (with
a warning), not trained on."""
from __future__ import annotations

import glob
import sqlite3
import struct
from collections import Counter

import pytest
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from mdgm_ros.data import bags


def _write(path, storage: str, n: int = 200):
    with bags.BagWriter(path, storage=storage) as bag:
        for i in range(n):
            bag.write("/joint_states", (i + 1) * 10_000_000, JointState(name=["a"], position=[float(i)]))
            bag.write("/note", (i + 1) * 10_000_000 + 1, String(data=f"note {i}"))
    return path


def _corrupt_rows(path, topic: str, rows: int) -> None:
    db = sqlite3.connect(glob.glob(str(path / "*.db3"))[0])
    ids = [r[0] for r in db.execute("SELECT m.id FROM messages m JOIN topics t ON m.topic_id = t.id "
                                    "WHERE t.name = ? ORDER BY m.id LIMIT ?", (topic, rows))]
    for i in ids:
        db.execute("UPDATE messages SET data = ? WHERE id = ?", (b"\x00\x01\xff\xff\xff\x7f", i))
    db.commit()
    db.close()


def test_a_corrupt_message_is_skipped_and_counted(tmp_path):
    path = _write(tmp_path / "bag", "sqlite3")
    _corrupt_rows(path, "/joint_states", 1)
    corrupt = Counter()
    seen = Counter(topic for topic, _, _ in bags.messages(path, corrupt=corrupt))
    assert corrupt == {"/joint_states": 1} and seen == {"/joint_states": 199, "/note": 200}
    with pytest.raises(bags.BagError, match="1 of 200 messages on /joint_states do not deserialise"):
        list(bags.messages(path, max_corrupt=0.0))


def test_too_many_corrupt_messages_stop_the_read(tmp_path):
    path = _write(tmp_path / "bag", "sqlite3")
    _corrupt_rows(path, "/note", 5)
    with pytest.raises(bags.BagError, match=r"3 of 200 messages on /note do not deserialise \(more than the 1\.0%"):
        list(bags.messages(path))
    assert sum(1 for _ in bags.messages(path, max_corrupt=0.05)) == 395


def _chunks(file) -> list[tuple[int, int]]:
    """(offset of the CRC field, CRC) of every chunk record."""
    data, at, out = open(file, "rb").read(), 8, []
    while at + 9 <= len(data) and data[at] != 0x02:
        length = struct.unpack_from("<Q", data, at + 1)[0]
        if data[at] == 0x06:
            out.append((at + 9 + 24, struct.unpack_from("<I", data, at + 9 + 24)[0]))
        at += 9 + length
    return out


def test_mcap_chunks_carry_crcs_and_a_chunk_with_flipped_bytes_is_skipped(tmp_path):
    path = _write(tmp_path / "bag", "mcap")
    file = glob.glob(str(path / "*.mcap"))[0]
    chunks = _chunks(file)
    assert chunks and all(crc != 0 for _, crc in chunks)
    assert sum(1 for _ in bags.messages(path)) == 400
    data = bytearray(open(file, "rb").read())
    data[chunks[0][0] + 200] ^= 0x01                     # one bit inside the first chunk's records
    open(file, "wb").write(bytes(data))
    with pytest.warns(bags.BagDamageWarning, match="checksum.*one chunk of 400 messages"):
        assert list(bags.messages(path)) == []


def test_add_chunk_crcs_leaves_set_crcs_alone(tmp_path):
    path = _write(tmp_path / "bag", "mcap")
    file = glob.glob(str(path / "*.mcap"))[0]
    before = open(file, "rb").read()
    assert bags.add_chunk_crcs(file) == 0 and open(file, "rb").read() == before
    (tmp_path / "x.mcap").write_bytes(b"not mcap")
    with pytest.raises(bags.BagError, match="not an MCAP file"):
        bags.add_chunk_crcs(tmp_path / "x.mcap")
