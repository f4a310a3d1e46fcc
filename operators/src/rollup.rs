//! The window rollup operator: a topology's window metrics over every window kind it declares
//! (tumbling and hopping), overall and per dimension value.

use std::collections::{BTreeMap, HashMap};

use tally_core::{RollupRow, Topology};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::aggregate::{Contribution, GroupingKey, Shape};
use crate::groups::Capped;
use crate::observation::OperatorCounters;
use crate::point::Point;

/// The open groupings that close at one time, with the capability to emit their rows.
struct Bucket {
    cap: Capability<u64>,
    groupings: HashMap<GroupingKey, Capped>,
}

/// Extension trait: a topology's windowed rollups.
pub trait WindowRollup<'scope> {
    /// Aggregates a topology's points (see [`Point::project`]) into every window of every
    /// window kind of `topology` containing them (one for a tumbling kind, `size / slide` for a
    /// hopping one): one all-events row and one row per value of each dimension (values past
    /// the dimension's cap folded into `__other__`, see `Dimension::max_values`), with one
    /// value per column of `topology.columns(RowTable::Windows)`.
    ///
    /// Emits the final rows of a window when the frontier reaches its close time (end +
    /// `grace_ms`), and a provisional row for every group that changed since its last row each
    /// time a record arrives on `ticks`. Every row of a window carries its close time as
    /// timestamp. A contribution read at or after its window's close time is late: not
    /// aggregated; each late event counts once per window kind in `counters` (replays excepted),
    /// and the window is corrected from the raw events later (see [`crate::late_windows`]).
    ///
    /// Contributions are exchanged by (window kind, start, dimension), so all values of one
    /// window and dimension meet on one worker and the cap rule sees them all.
    ///
    /// ```
    /// use tally_core::{Metric, Topology, Value, WindowSpec};
    /// use tally_operators::{OperatorCounters, Point, WindowRollup};
    /// use timely::dataflow::operators::capture::Event;
    /// use timely::dataflow::operators::{Capture, ToStream};
    ///
    /// let t = Topology::builder("t")
    ///     .window(WindowSpec::tumbling("1m", 60_000))
    ///     .metric(Metric::Events)
    ///     .metric(Metric::UniqueUsers)
    ///     .build()
    ///     .unwrap();
    /// let point = |ts_ms, user| Point {
    ///     ts_ms, user, session: None, event_type: 0, groups: vec![], fields: vec![],
    ///     replayed: false,
    /// };
    /// let rows = timely::example(move |scope| {
    ///     let ticks = Vec::<()>::new().to_stream(scope);
    ///     vec![point(1_000, 1), point(2_000, 2), point(3_000, 1)]
    ///         .to_stream(scope)
    ///         .window_rollup(ticks, &t, 5_000, OperatorCounters::default())
    ///         .capture()
    /// });
    /// let rows: Vec<_> = rows
    ///     .try_iter()
    ///     .flat_map(|e| match e {
    ///         Event::Messages(_, rows) => rows,
    ///         Event::Progress(_) => vec![],
    ///     })
    ///     .collect();
    /// assert_eq!(rows.len(), 1);
    /// assert_eq!(rows[0].values, vec![Value::U64(3), Value::U64(2)]);
    /// assert!(rows[0].is_final);
    /// ```
    fn window_rollup(
        self,
        ticks: StreamVec<'scope, u64, ()>,
        topology: &Topology,
        grace_ms: u64,
        counters: OperatorCounters,
    ) -> StreamVec<'scope, u64, RollupRow>;
}

impl<'scope> WindowRollup<'scope> for StreamVec<'scope, u64, Point> {
    fn window_rollup(
        self,
        ticks: StreamVec<'scope, u64, ()>,
        topology: &Topology,
        grace_ms: u64,
        counters: OperatorCounters,
    ) -> StreamVec<'scope, u64, RollupRow> {
        let shape = Shape::new(topology);
        let contributions = fan_out(self, shape.clone(), grace_ms, counters.clone());
        let route = Exchange::new(|c: &Contribution| c.route());
        contributions.binary_frontier(
            ticks,
            route,
            Pipeline,
            "WindowRollup",
            move |_cap, _info| {
                let mut open: BTreeMap<u64, Bucket> = BTreeMap::new();
                move |(data, frontier), (ticks, _), output| {
                    data.for_each(|cap, batch| {
                        let Some(&read_time) = cap.least() else {
                            return;
                        };
                        let mut folded = 0;
                        for c in batch.drain(..) {
                            let close = shape.close_time(&c.key, grace_ms);
                            // The fan-out dropped late contributions; one that got here late
                            // anyway (it cannot) must not reopen a closed window.
                            if close <= read_time {
                                continue;
                            }
                            let bucket = open.entry(close).or_insert_with(|| Bucket {
                                cap: cap.delayed(&close, 0),
                                groupings: HashMap::new(),
                            });
                            folded += bucket
                                .groupings
                                .entry(c.key)
                                .or_insert_with(|| shape.grouping(&c.key))
                                .add(&c.value, &c.point, &shape.layout);
                        }
                        counters.add_folded(folded);
                    });
                    let mut tick = false;
                    ticks.for_each(|_cap, batch| {
                        batch.clear();
                        tick = true;
                    });
                    while let Some(entry) = open.first_entry() {
                        if frontier.less_than(entry.key()) {
                            break;
                        }
                        let bucket = entry.remove();
                        let mut session = output.session(&bucket.cap);
                        for (key, grouping) in bucket.groupings {
                            for group in grouping.finals(&shape.layout) {
                                session.give(shape.row(&key, group, true));
                            }
                        }
                    }
                    if tick {
                        for bucket in open.values_mut() {
                            let mut session = output.session(&bucket.cap);
                            for (key, grouping) in bucket.groupings.iter_mut() {
                                for group in grouping.provisional(&shape.layout) {
                                    session.give(shape.row(key, group, false));
                                }
                            }
                        }
                    }
                }
            },
        )
    }
}

/// Splits each point into its contributions, on the worker that read it, and drops (and
/// counts) the late ones: those whose window had closed when the point was read.
fn fan_out<'scope>(
    points: StreamVec<'scope, u64, Point>,
    shape: Shape,
    grace_ms: u64,
    counters: OperatorCounters,
) -> StreamVec<'scope, u64, Contribution> {
    points.unary::<CapacityContainerBuilder<Vec<Contribution>>, _, _, _>(
        Pipeline,
        "WindowFanOut",
        move |_cap, _info| {
            let windows: Vec<_> = shape.windows().cloned().collect();
            let mut late = vec![0u64; windows.len()];
            let mut late_here = vec![false; windows.len()];
            let mut out = Vec::new();
            move |input, output| {
                input.for_each(|cap, batch| {
                    let Some(&read_time) = cap.least() else {
                        return;
                    };
                    let mut session = output.session(&cap);
                    for point in batch.drain(..) {
                        late_here.iter_mut().for_each(|l| *l = false);
                        shape.contributions(
                            &point,
                            |w, start| {
                                let on_time = windows[w].close_time(start, grace_ms) > read_time;
                                late_here[w] |= !on_time;
                                on_time
                            },
                            &mut out,
                        );
                        if !point.replayed {
                            for (n, l) in late.iter_mut().zip(&late_here) {
                                *n += u64::from(*l);
                            }
                        }
                        session.give_iterator(out.drain(..));
                    }
                });
                for (n, w) in late.iter_mut().zip(&windows) {
                    counters.add_late(shape.topology(), &w.name, std::mem::take(n));
                }
            }
        },
    )
}
