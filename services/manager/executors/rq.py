"""`rq`: one rq job per item. The manager consumes the stage's stream and enqueues a job per entry, the enqueue
and the XACK in one MULTI (rq's `pipeline=`), so an entry is never lost between the two nor enqueued twice.
Job ids come from the item and its version, not the attempt: a job still queued or running for the same item
and version is not enqueued again. Retries are rq's (Retry(max=max_deliveries - 1)); its last failure lands in
our dead-letter stream (see rq_job.on_failure). rq workers (`rq worker batchmesh-<pipeline>-<stage>`) run them."""

from __future__ import annotations

import hashlib
import logging

from rq import Callback, Queue, Retry
from rq.job import JOB_ID_PATTERN, Job, JobStatus

from services.core import Commit, Delivery, StreamConsumer, WorkItem

from .base import Executor, StageContext, rq_queue_name
from .rq_job import on_failure, run_item

log = logging.getLogger(__name__)

PENDING = {JobStatus.QUEUED.value, JobStatus.STARTED.value, JobStatus.SCHEDULED.value, JobStatus.DEFERRED.value}
FAILURE_TTL_S = 24 * 3600  # rq keeps failed jobs this long for `rq info`; our dead-letter stream is the record
CALLBACK = Callback(on_failure)


def job_id(pipeline: str, stage: str, item: WorkItem) -> str:
    """The same for every delivery of one item version at one stage; the stage and pipeline are part of it, since
    one item passes several rq stages (and pipelines share a Redis)."""
    version = item.version or "none"
    if not JOB_ID_PATTERN.fullmatch(version) or len(version) > 64:
        version = hashlib.sha256(version.encode()).hexdigest()[:16]
    return f"bm-{pipeline}-{stage}-{item.key}-{version}"


class RqExecutor(Executor):
    name = "rq"

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.argv, self.env = ctx.command()  # fails at start, not in the thread, if the stage cannot be run

    def run(self) -> None:
        ctx = self.ctx
        self.consumer = StreamConsumer(ctx.client, ctx.settings, stage=ctx.stage, input_stream=ctx.work.input)
        self.queue = Queue(rq_queue_name(ctx.pipeline.name, ctx.stage), connection=ctx.client)
        max_deliveries = ctx.settings.max_deliveries
        self.retry = Retry(max=max_deliveries - 1) if max_deliveries > 1 else None
        self.meta = {"max_deliveries": max_deliveries, "input": self.consumer.stream_key}
        while not self.stopping.is_set():
            batch = self.consumer.read()
            if batch:
                self.enqueue(batch)

    def enqueue(self, batch: list[Delivery]) -> None:
        ctx, client = self.ctx, self.ctx.client
        malformed = Commit()
        live = []
        for delivery in batch:
            if delivery.item is None:
                malformed.dead_letter(delivery, delivery.malformed or "malformed item")
            else:
                live.append((delivery, job_id(ctx.pipeline.name, ctx.stage, delivery.item)))
        # Which jobs are still pending (one round trip): a dead letter replayed while rq still holds its job, or
        # an entry redelivered by a reclaim, must not run twice.
        check = client.pipeline(transaction=False)
        for _, jid in live:
            check.hget(Job.key_for(jid), "status")
        statuses = check.execute() if live else []
        pipe = client.pipeline(transaction=True)
        pipe.multi()  # explicit, so rq queues its commands into our transaction instead of starting its own
        enqueued = 0
        for (delivery, jid), status in zip(live, statuses, strict=True):
            if status is not None and status.decode() in PENDING:
                continue
            if status == JobStatus.FAILED.value.encode():  # a replayed dead letter: rq's failure is history now
                self.queue.failed_job_registry.remove(jid, pipeline=pipe)
            assert delivery.item is not None
            self.queue.enqueue_call(
                run_item,
                args=(ctx.pipeline.name, ctx.stage, self.argv, delivery.raw.decode(), str(ctx.out_dir),
                      ctx.work.timeout, self.env, ctx.output is None),
                job_id=jid, timeout=int(ctx.work.timeout) + 60, result_ttl=0, failure_ttl=FAILURE_TTL_S,
                retry=self.retry, on_failure=CALLBACK, meta=self.meta, pipeline=pipe,
            )
            enqueued += 1
        if live:
            pipe.xack(self.consumer.stream_key, self.consumer.group, *[d.entry_id for d, _ in live])
            pipe.execute()
        self.consumer.commit(malformed)
        if enqueued:
            log.debug("enqueued", extra={"event": "rq.enqueue", "stage": ctx.stage, "count": enqueued})
