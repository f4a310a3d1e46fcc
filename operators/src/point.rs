//! An event as one topology sees it: filtered, its dimension values and numeric fields read.

use serde::{Deserialize, Serialize};
use tally_core::Topology;

use crate::hashing::hash64;
use crate::observation::Observation;

/// One kept event projected for one topology (see [`Point::project`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Event time, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Hash of the user id.
    pub user: u128,
    /// Hash of the client's session id, `None` when absent.
    pub session: Option<u128>,
    /// `hash64` of the event type.
    pub event_type: u64,
    /// One value per dimension of the topology, in declaration order
    /// ([`tally_core::Dimension::value_of`]).
    pub groups: Vec<String>,
    /// One value per [`Topology::fields`]: the field's value when it is a JSON number.
    pub fields: Vec<Option<f64>>,
    /// Read again after a restart (a late replayed event is expected, not counted as late).
    pub replayed: bool,
}

impl Point {
    /// Projects `obs` for `topology`; `None` when one of its filters rejects the event.
    pub fn project(topology: &Topology, obs: &Observation) -> Option<Point> {
        if !topology.accepts(&obs.event_type, &obs.metadata) {
            return None;
        }
        let groups = topology
            .dimensions
            .iter()
            .map(|d| d.value_of(&obs.event_type, &obs.metadata))
            .collect();
        let fields = topology
            .fields()
            .iter()
            .map(|p| p.get(&obs.metadata).and_then(serde_json::Value::as_f64))
            .collect();
        Some(Point {
            ts_ms: obs.ts_ms,
            user: obs.user,
            session: obs.session,
            event_type: hash64(&obs.event_type),
            groups,
            fields,
            replayed: obs.replayed,
        })
    }
}
