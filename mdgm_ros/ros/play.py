"""``mdgm-ros play BAG``: publish a bag's messages on their topics with the original timing.

What ``ros2 bag play`` does, for installs without rosbag2: the CDR bytes are published as they are
(no deserialisation), paced by the bag's log times divided by ``--rate``. ``--clock`` publishes
``/clock`` (rosgraph_msgs/Clock) with the bag time before each new instant, so nodes with
``use_sim_time`` see the recorded time. ``--loop`` starts over at the end (stamps jump back, which
the fusion node handles by clearing its buffers). ``--drop TOPIC:START:END`` withholds a topic for a
span of bag time (seconds from the start): a scripted sensor outage. A damaged bag plays the
messages it still holds, with one warning saying what is lost.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import rclpy
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock

from ..data import bags
from ..streams import bridge
from .guard import GuardedNode

PLAY_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)   # matches best-effort subscribers too


@dataclass(frozen=True)
class Drop:
    topic: str
    start_s: float
    end_s: float

    @classmethod
    def parse(cls, text: str) -> "Drop":
        try:
            topic, start, end = text.rsplit(":", 2)
            drop = cls(topic, float(start), float(end))
        except ValueError:
            raise ValueError(f"--drop {text!r}: expected TOPIC:START:END (seconds from the bag start)") from None
        if drop.end_s <= drop.start_s:
            raise ValueError(f"--drop {text!r}: END must be after START")
        return drop

    def covers(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.end_s


@dataclass
class PlayStats:
    published: int = 0
    dropped: int = 0
    loops: int = 0
    late_ms_max: float = 0.0


class BagPlayer(GuardedNode, Node):
    def __init__(self, bag: str | Path, rate: float = 1.0, clock: bool = False, drops: tuple[Drop, ...] = (),
                 topics: list[str] | None = None):
        super().__init__("mdgm_play")
        if rate <= 0:
            raise ValueError("--rate must be > 0")
        self.bag = Path(bag)
        self.rate = rate
        self.drops_by_topic: dict[str, list[Drop]] = {}
        for drop in drops:
            self.drops_by_topic.setdefault(drop.topic, []).append(drop)
        available = bags.topics(self.bag, damage=bags.ignore_damage)      # reported by each read of it
        self.topics = [t for t in available if topics is None or t in topics]
        missing = sorted(set(topics or []) - set(available))
        if missing:
            raise bags.BagError(f"bag {self.bag} has no topic(s) {missing}")
        self.publishers_by_topic = {t: self.create_publisher(bags.message_class(available[t]), t, PLAY_QOS)
                                    for t in self.topics}
        self.clock_pub = self.create_publisher(Clock, "/clock", 10) if clock else None
        self.stats = PlayStats()

    def wait_for_delivery(self, timeout_s: float = 5.0) -> bool:
        """Before exiting: until the reliable subscribers have acknowledged everything published (the
        last messages are otherwise lost with the process), ``timeout_s`` at most in all."""
        deadline = time.monotonic() + timeout_s
        for publisher in self.publishers_by_topic.values():
            left = max(0.0, deadline - time.monotonic())
            if not publisher.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9))):
                return False
        return True

    def play_once(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        first_ns: int | None = None
        last_clock = -1
        wall0 = time.monotonic()
        for item in bags.raw_messages(self.bag, self.topics):
            if should_stop():
                return
            first_ns = item.log_ns if first_ns is None else first_ns
            t_s = (item.log_ns - first_ns) / 1e9
            delay = wall0 + t_s / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                self.stats.late_ms_max = max(self.stats.late_ms_max, -delay * 1e3)
            if self.clock_pub is not None and item.log_ns != last_clock:
                self.clock_pub.publish(Clock(clock=bridge.ns_to_stamp(item.log_ns)))
                last_clock = item.log_ns
            if any(d.covers(t_s) for d in self.drops_by_topic.get(item.topic, ())):
                self.stats.dropped += 1
                continue
            self.publishers_by_topic[item.topic].publish(item.data)
            self.stats.published += 1


def play(bag: str | Path, rate: float = 1.0, loop: bool = False, clock: bool = False, drops: tuple[Drop, ...] = (),
         topics: list[str] | None = None, wait_for_subscribers: float = 0.0, log=print) -> PlayStats:
    """Replay ``bag`` (blocking). ``wait_for_subscribers`` seconds at most for the first subscriber of
    every topic, so nothing published at the start is lost to discovery."""
    rclpy.init()
    try:
        player = BagPlayer(bag, rate, clock, drops, topics)
        deadline = time.monotonic() + wait_for_subscribers
        while time.monotonic() < deadline and any(p.get_subscription_count() == 0
                                                  for p in player.publishers_by_topic.values()
                                                  if not p.topic_name.startswith("/sim/")):
            time.sleep(0.05)
        log(f"playing {bag} ({len(player.topics)} topics, rate {rate}{', /clock' if clock else ''}"
            f"{', loop' if loop else ''})")
        while True:
            player.play_once()
            if not loop:
                break
            player.stats.loops += 1
        player.wait_for_delivery()
        player.destroy_node()
        return player.stats
    finally:
        rclpy.try_shutdown()
