//! Writing to Kafka with a bounded window of deliveries in flight, shared by `tally produce` and
//! `tally import`: [`Deliveries`] enqueues records without waiting for each acknowledgement,
//! and [`check_topic`] fails fast when the brokers do not answer or the topic is missing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::bail;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

/// How long to back off when librdkafka's queue is full and nothing is in flight to wait for.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(10);
/// How long [`check_topic`] waits for the brokers' metadata.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// What Kafka said about one record: `Ok` once acknowledged (by every in-sync replica with
/// `acks=all`), else the error after librdkafka's own retries (`message.timeout.ms`).
pub type Outcome<T> = (T, Result<(), KafkaError>);

/// Records sent to Kafka whose acknowledgement has not been taken yet, each with a tag `T`
/// that says which record it was. At most `max_in_flight` are unacknowledged at once:
/// [`Deliveries::send`] waits for the oldest to finish before enqueueing more.
pub struct Deliveries<T> {
    pending: FuturesUnordered<Tagged<T>>,
    /// Finished deliveries, in the order they finished, until [`Deliveries::take_done`].
    done: Vec<Outcome<T>>,
    max_in_flight: usize,
}

impl<T: Unpin> Deliveries<T> {
    /// An empty window of at most `max_in_flight` (at least 1) unacknowledged records.
    pub fn new(max_in_flight: usize) -> Self {
        Deliveries {
            pending: FuturesUnordered::new(),
            done: Vec::new(),
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// Records enqueued and not yet acknowledged or failed.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Enqueues `record` without waiting for its acknowledgement, after waiting for room in
    /// the window (and in librdkafka's queue when it is full).
    ///
    /// # Errors
    /// The error librdkafka gave when it refused to enqueue the record (e.g. larger than the
    /// producer's `message.max.bytes`), with the record's tag.
    pub async fn send<K, P>(
        &mut self,
        producer: &FutureProducer,
        mut record: FutureRecord<'_, K, P>,
        tag: T,
    ) -> Result<(), (KafkaError, T)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        while self.pending.len() >= self.max_in_flight {
            self.wait_one().await;
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    self.pending.push(Tagged {
                        tag: Some(tag),
                        delivery,
                    });
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    if self.pending.is_empty() {
                        tokio::time::sleep(QUEUE_FULL_BACKOFF).await; // nothing to wait for
                    } else {
                        self.wait_one().await;
                    }
                }
                Err((e, _)) => return Err((e, tag)),
            }
        }
    }

    /// Moves the deliveries that already finished to the done list, without waiting.
    pub fn reap(&mut self) {
        while let Some(Some(outcome)) = self.pending.next().now_or_never() {
            self.done.push(outcome);
        }
    }

    /// Waits until every record in flight is acknowledged or failed. Bounded by the producer's
    /// `message.timeout.ms`, after which librdkafka fails what it could not deliver.
    pub async fn drain(&mut self) {
        while !self.pending.is_empty() {
            self.wait_one().await;
        }
    }

    /// The finished deliveries not taken yet, oldest first.
    pub fn take_done(&mut self) -> std::vec::Drain<'_, Outcome<T>> {
        self.done.drain(..)
    }

    async fn wait_one(&mut self) {
        if let Some(outcome) = self.pending.next().await {
            self.done.push(outcome);
        }
    }
}

/// One delivery and the tag of its record.
struct Tagged<T> {
    tag: Option<T>,
    delivery: DeliveryFuture,
}

impl<T: Unpin> Future for Tagged<T> {
    type Output = Outcome<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<T>> {
        let result = match self.delivery.poll_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(Ok(_))) => Ok(()),
            Poll::Ready(Ok(Err((error, _message)))) => Err(error),
            // The producer was dropped before librdkafka reported on the record.
            Poll::Ready(Err(_canceled)) => Err(KafkaError::Canceled),
        };
        match self.tag.take() {
            Some(tag) => Poll::Ready((tag, result)),
            None => Poll::Pending, // polled again after completion: never, FuturesUnordered
        }
    }
}

/// Fails fast with a clear message when the brokers are unreachable or the topic is missing
/// (the local stack does not auto-create topics).
///
/// # Errors
/// `NotMigrated` (exit 78, "run `tally migrate`") when `topic` does not exist; `Unavailable`
/// (exit 69) when the brokers do not answer within 10 s; a plain error when the topic exists
/// but reports another error.
pub async fn check_topic(
    producer: &FutureProducer,
    brokers: &str,
    topic: &str,
) -> anyhow::Result<()> {
    let (client, name) = (producer.clone(), topic.to_owned());
    let metadata = tokio::task::spawn_blocking(move || {
        client
            .client()
            .fetch_metadata(Some(&name), METADATA_TIMEOUT)
    })
    .await?
    .map_err(|e| tally_pipeline::PipelineError::Unavailable {
        service: "kafka",
        address: brokers.to_owned(),
        reason: e.to_string(),
    })?;
    let missing = || tally_pipeline::PipelineError::NotMigrated {
        what: format!("Kafka topic `{topic}`"),
    };
    match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
        Some(t) => match t.error().map(RDKafkaErrorCode::from) {
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) | None => Err(missing().into()),
            Some(err) => bail!("topic {topic} is not usable: {err}"),
        },
        None => Err(missing().into()),
    }
}
