"""The rendezvous' Kafka work and nothing else: what one instance could reach if its own Python
cost nothing.

`KafkaSkeleton` runs on the service skeleton with the rendezvous' own `StreamSpec` (its consumer
settings, transactional producer, commit cadence and output linger) and, for every request read,
writes what the rendezvous writes for it: a reply through a second producer with linger 0 (as
the rendezvous' return-address producer), and an answer and a comparison record inside the
transaction. Scores are read and dropped. Nothing is decoded, joined or encoded: every output is
the request's own bytes. bench/rendezvous_throughput.py times it beside the rendezvous, so the
rendezvous' cost per request splits into this part (Kafka calls, commits, the skeleton) and the
rest (decode, join, encode, metrics), the part bench/join_ceiling.py measures without Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from confluent_kafka import Message

from services.core.kafka import Producer
from services.core.service import Context, SimpleHandler, StreamService, StreamSpec


@dataclass(frozen=True)
class Outputs:
    """Where the skeleton writes: topics of its own, so their records count only its work."""

    answers: str
    log: str
    replies: str | None  # None: requests carry no return address


class KafkaSkeleton(SimpleHandler):
    def __init__(self, rendezvous_spec: StreamSpec, requests_topic: str, outputs: Outputs):
        super().__init__()
        spec = replace(rendezvous_spec, name="kafka-skeleton", outputs=(outputs.answers, outputs.log))
        self.service = StreamService(spec, self)
        self.ready = self.service.ready
        self.run = self.service.run
        self._requests = requests_topic
        self._out = outputs
        self._fast: Producer | None = None
        self.replies_acknowledged = 0

    def start(self, ctx: Context) -> None:
        super().start(ctx)
        fast = Producer({**ctx.config, "linger.ms": 0}, delivered=True)
        ctx.stack.callback(fast.close)
        self._fast = fast

    def on_batch(self, messages: list[Message]) -> None:
        assert self.ctx is not None and self._fast is not None
        self.positions.advance(messages)
        lane, fast, out = self.ctx.outputs, self._fast, self._out
        for msg in messages:
            if msg.topic() != self._requests:
                continue
            value, key, partition = msg.value(), msg.key(), msg.partition()
            if out.replies is not None:
                fast.produce(out.replies, value, key=key, partition=partition, on_done=self._acknowledged)
            lane.produce(out.answers, value, key=key, partition=partition)
            lane.produce(out.log, value, key=key, partition=partition)
        fast.poll(0)

    def on_tick(self) -> None:
        if self._fast is not None:
            self._fast.poll(0)

    def next_wakeup(self) -> float:
        return 0.1

    def _acknowledged(self) -> None:
        self.replies_acknowledged += 1
