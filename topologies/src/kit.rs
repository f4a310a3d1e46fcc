//! A deterministic test kit for topologies: scripted events with explicit partitions, offsets
//! and watermarks, run through the real timely dataflow of [`crate::build`] on any number of
//! workers, every rollup row captured.
//!
//! A [`Script`] is a sequence of steps, as a Kafka source would produce them: events read from
//! a partition at an offset, watermark advances (the dataflow time every later event is read
//! at), and ticks (provisional rows). Each worker reads the partitions `p` with
//! `p % workers == index`, in script order, and follows every watermark and tick step, so an
//! event's read time (the watermark before it) does not depend on the number of workers.
//! Copies of one event id should be in one partition (Kafka keys events by user): copies in
//! two partitions read at one watermark reach the dedup in an order that depends on threads.
//!
//! ```
//! use tally_topologies::kit::{event, run, settle, Config, Script};
//! use tally_topologies::product_analytics;
//!
//! let mut script = Script::new();
//! script
//!     .event(0, event("e1", 1_000, "click", "u1", None))
//!     .event(1, event("e2", 2_000, "view", "u2", None))
//!     .event(0, event("e1", 1_000, "click", "u1", None)) // a re-send
//!     .watermark(120_000);
//! let out = run(&script, &[product_analytics()], &Config::workers(2));
//! let settled = settle(&out.rows);
//! let minute = settled
//!     .iter()
//!     .find(|(k, _)| k.window == "1m" && k.start_ms == 0 && k.dimension.is_empty())
//!     .map(|(_, s)| s.values[0].as_f64());
//! assert_eq!(minute, Some(2.0));
//! assert!(settled.values().all(|s| s.is_final));
//! assert_eq!(out.counters.duplicates(), 1);
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tally_core::{RollupRow, RowTable, Topology, Value};
use tally_operators::{hash128, Observation, OperatorCounters};
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

/// One step of a script.
#[derive(Clone, Debug)]
pub enum Step {
    /// An event read from `partition` at `offset`.
    Event {
        /// Kafka partition (decides the worker: `partition % workers`).
        partition: u32,
        /// Offset in the partition (identifies the kept copy).
        offset: u64,
        /// The event.
        observation: Observation,
    },
    /// The watermark moves to this time (ms); earlier or equal values change nothing.
    Watermark(u64),
    /// Every worker sends a tick (provisional rows of changed groups).
    Tick,
}

/// A scripted read: events, watermarks and ticks in order.
#[derive(Clone, Debug, Default)]
pub struct Script {
    steps: Vec<Step>,
    next_offset: BTreeMap<u32, u64>,
}

impl Script {
    /// An empty script (watermark 0).
    pub fn new() -> Script {
        Script::default()
    }

    /// Reads `observation` from `partition` at the partition's next offset (0, 1, ...).
    pub fn event(&mut self, partition: u32, observation: Observation) -> &mut Script {
        let offset = self.next_offset.get(&partition).copied().unwrap_or(0);
        self.event_at(partition, offset, observation)
    }

    /// Reads `observation` from `partition` at `offset` (later events of the partition continue
    /// from `offset + 1`).
    pub fn event_at(
        &mut self,
        partition: u32,
        offset: u64,
        observation: Observation,
    ) -> &mut Script {
        self.next_offset.insert(partition, offset + 1);
        self.steps.push(Step::Event {
            partition,
            offset,
            observation,
        });
        self
    }

    /// Advances the watermark (the input time of every worker) to `ms`.
    pub fn watermark(&mut self, ms: u64) -> &mut Script {
        self.steps.push(Step::Watermark(ms));
        self
    }

    /// A tick on every worker.
    pub fn tick(&mut self) -> &mut Script {
        self.steps.push(Step::Tick);
        self
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Every event with the watermark it is read at, in script order.
    pub fn reads(&self) -> Vec<(u64, &Observation)> {
        let mut watermark = 0;
        let mut out = Vec::new();
        for step in &self.steps {
            match step {
                Step::Watermark(ms) => watermark = watermark.max(*ms),
                Step::Event { observation, .. } => out.push((watermark, observation)),
                Step::Tick => {}
            }
        }
        out
    }
}

/// How to run a script.
#[derive(Clone, Debug)]
pub struct Config {
    /// Timely workers (threads of one process).
    pub workers: usize,
    /// Grace period, ms (see [`crate::build`]).
    pub grace_ms: u64,
    /// Let the dataflow run (flush the inputs and step every worker a few times) after every
    /// `step_every` events a worker reads, so batches end there; 0: only at ticks and the end.
    pub step_every: usize,
}

impl Config {
    /// `workers` workers, no grace, batches only cut at ticks.
    pub fn workers(workers: usize) -> Config {
        Config {
            workers,
            grace_ms: 0,
            step_every: 0,
        }
    }
}

/// A kept copy: the first copy read of an event id, as the dedup passed it on.
#[derive(Clone, Debug, PartialEq)]
pub struct Kept {
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// The watermark it was read at.
    pub read_time: u64,
    /// The event.
    pub observation: Observation,
}

/// What a run produced.
#[derive(Debug)]
pub struct Output {
    /// Every rollup row in the order its worker emitted it (rows of one key come from one
    /// worker, in order), with the dataflow time it carries.
    pub rows: Vec<(u64, RollupRow)>,
    /// Every kept copy, sorted by (partition, offset).
    pub kept: Vec<Kept>,
    /// The operators' counters (late events, duplicates, folded values), summed over workers.
    pub counters: OperatorCounters,
}

/// A kept copy's identity in the dataflow (the payload `R` of [`crate::build`]).
type PartitionOffset = (u32, u64);

/// Runs `script` through [`crate::build`] of `topologies` on `config.workers` workers and
/// returns every row. The inputs close at the end, so every window emits its final rows.
///
/// Panics if timely cannot start its workers (a test kit: there is nothing to recover).
pub fn run(script: &Script, topologies: &[Topology], config: &Config) -> Output {
    let rows: Arc<Mutex<Vec<(u64, RollupRow)>>> = Arc::default();
    let kept: Arc<Mutex<Vec<(u64, PartitionOffset)>>> = Arc::default();
    let counters = OperatorCounters::default();
    let (r, k, c) = (Arc::clone(&rows), Arc::clone(&kept), counters.clone());
    let steps = script.steps.clone();
    let topologies = topologies.to_vec();
    let (grace_ms, step_every) = (config.grace_ms, config.step_every);
    let guards = timely::execute(
        timely::Config::process(config.workers.max(1)),
        move |worker| {
            let mut input = InputHandle::new();
            let mut ticks = InputHandle::new();
            let probe = ProbeHandle::new();
            let (r, k) = (Arc::clone(&r), Arc::clone(&k));
            worker.dataflow::<u64, _, _>(|scope| {
                let out = crate::build(
                    input.to_stream(scope),
                    ticks.to_stream(scope),
                    &topologies,
                    grace_ms,
                    &c,
                );
                out.kept
                    .inspect_core(move |event| {
                        if let Ok((stamp, batch)) = event {
                            if let Some(&time) = stamp.least() {
                                let mut kept = k.lock().unwrap_or_else(|e| e.into_inner());
                                kept.extend(batch.iter().map(|id: &(u32, u64)| (time, *id)));
                            }
                        }
                    })
                    .probe_with(&probe);
                out.rollups
                    .inspect_core(move |event| {
                        if let Ok((stamp, batch)) = event {
                            if let Some(&time) = stamp.least() {
                                let mut rows = r.lock().unwrap_or_else(|e| e.into_inner());
                                rows.extend(
                                    batch.iter().map(|row: &RollupRow| (time, row.clone())),
                                );
                            }
                        }
                    })
                    .probe_with(&probe);
            });
            let (index, peers) = (worker.index(), worker.peers());
            let mut read = 0usize;
            for step in &steps {
                match step {
                    Step::Watermark(ms) => {
                        if *ms > *input.time() {
                            input.advance_to(*ms);
                            ticks.advance_to(*ms);
                        }
                    }
                    Step::Event {
                        partition,
                        offset,
                        observation,
                    } => {
                        if *partition as usize % peers != index {
                            continue;
                        }
                        input.send((observation.clone(), (*partition, *offset)));
                        read += 1;
                        if step_every > 0 && read.is_multiple_of(step_every) {
                            input.flush();
                            for _ in 0..4 {
                                worker.step();
                            }
                        }
                    }
                    Step::Tick => {
                        // Let the data reach the rollups before the tick does.
                        input.flush();
                        for _ in 0..8 {
                            worker.step();
                        }
                        ticks.send(());
                        ticks.flush();
                        for _ in 0..8 {
                            worker.step();
                        }
                    }
                }
            }
            drop(input);
            drop(ticks);
            while !probe.done() {
                worker.step();
            }
        },
    );
    match guards {
        Ok(guards) => {
            for result in guards.join() {
                if let Err(e) = result {
                    panic!("a timely worker failed: {e}");
                }
            }
        }
        Err(e) => panic!("timely did not start: {e}"),
    }
    let rows = std::mem::take(&mut *rows.lock().unwrap_or_else(|e| e.into_inner()));
    let ids = std::mem::take(&mut *kept.lock().unwrap_or_else(|e| e.into_inner()));
    let by_id: BTreeMap<(u32, u64), &Observation> = script
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Event {
                partition,
                offset,
                observation,
            } => Some(((*partition, *offset), observation)),
            _ => None,
        })
        .collect();
    let mut kept: Vec<Kept> = ids
        .into_iter()
        .filter_map(|(read_time, (partition, offset))| {
            by_id.get(&(partition, offset)).map(|o| Kept {
                partition,
                offset,
                read_time,
                observation: (*o).clone(),
            })
        })
        .collect();
    kept.sort_by_key(|k| (k.partition, k.offset));
    Output {
        rows,
        kept,
        counters,
    }
}

/// Identifies one group of one window of one topology's table: the key of a stored row.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    /// Topology name.
    pub topology: String,
    /// Which table.
    pub table: RowTable,
    /// Window name.
    pub window: String,
    /// Window start, ms.
    pub start_ms: u64,
    /// Dimension name, empty for the all-events row.
    pub dimension: String,
    /// Dimension value, empty for the all-events row.
    pub value: String,
}

impl RowKey {
    /// The key of `row`.
    pub fn of(row: &RollupRow) -> RowKey {
        RowKey {
            topology: row.topology.to_string(),
            table: row.table,
            window: row.window.to_string(),
            start_ms: row.start_ms,
            dimension: row.dimension.to_string(),
            value: row.value.clone(),
        }
    }
}

/// The value a key settles on: its last row.
#[derive(Clone, Debug, PartialEq)]
pub struct Settled {
    /// The column values of the last row.
    pub values: Vec<Value>,
    /// Whether that row was final.
    pub is_final: bool,
}

impl Settled {
    /// Whether every value is 0 (a group folded into `__other__` after it was shown).
    pub fn is_zero(&self) -> bool {
        self.values.iter().all(|v| v.as_f64() == 0.0)
    }
}

/// Folds rows (in emission order) into the value each key settles on, as storage does
/// (`ReplacingMergeTree`: the last version wins): the last row per key.
pub fn settle<'a>(
    rows: impl IntoIterator<Item = &'a (u64, RollupRow)>,
) -> BTreeMap<RowKey, Settled> {
    let mut out = BTreeMap::new();
    for (_, row) in rows {
        out.insert(
            RowKey::of(row),
            Settled {
                values: row.values.clone(),
                is_final: row.is_final,
            },
        );
    }
    out
}

/// An event as the source would read it: ids hashed, metadata shared.
/// `metadata` must be a JSON object (anything else is read as `{}`).
pub fn event_with(
    id: &str,
    ts_ms: u64,
    event_type: &str,
    user: &str,
    session: Option<&str>,
    metadata: serde_json::Value,
) -> Observation {
    let metadata = match metadata {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    Observation {
        event_id: hash128(id),
        ts_ms,
        event_type: event_type.to_owned(),
        user: hash128(user),
        session: session.map(hash128),
        metadata: Arc::new(metadata),
        replayed: false,
    }
}

/// An event without metadata (see [`event_with`]).
pub fn event(
    id: &str,
    ts_ms: u64,
    event_type: &str,
    user: &str,
    session: Option<&str>,
) -> Observation {
    event_with(
        id,
        ts_ms,
        event_type,
        user,
        session,
        serde_json::Value::Null,
    )
}
