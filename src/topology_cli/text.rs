//! The words of `tally topology plan`: the dataflow and how long its state lives.

use std::fmt::Write as _;

use tally_core::{Component, DistinctMode, Filter, RowTable, Topology, WindowSpec};

/// `ms` as `1d 2h 5s` (`0s` for 0).
pub fn human(ms: u64) -> String {
    let mut parts = Vec::new();
    let mut rest = ms;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if rest >= size {
            parts.push(format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

fn or_none(items: Vec<String>) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

fn filter_text(f: &Filter) -> String {
    match f {
        Filter::EventTypeIn(types) => format!("event_type in [{}]", types.join(", ")),
        Filter::EventTypeNotIn(types) => format!("event_type not in [{}]", types.join(", ")),
        Filter::MetadataEquals(path, value) => format!("{path} = {value}"),
    }
}

/// Each filter in words (`event_type in [a, b]`, `metadata.plan = "pro"`).
pub fn filters_list(t: &Topology) -> Vec<String> {
    t.filters.iter().map(filter_text).collect()
}

/// The filters in words (`every event` when there are none).
pub fn filters_text(t: &Topology) -> String {
    if t.filters.is_empty() {
        return "every event (no filters)".to_owned();
    }
    let parts: Vec<String> = t.filters.iter().map(filter_text).collect();
    format!("events with {}", parts.join(" and "))
}

fn window_line(w: &WindowSpec) -> String {
    let per = w.windows_per_event();
    format!(
        "{:<10} {:<9} size {:<6} slide {:<6} {per} window{} per event",
        w.name,
        w.kind(),
        WindowSpec::format_duration(w.size_ms),
        WindowSpec::format_duration(w.slide_ms),
        if per == 1 { "" } else { "s" }
    )
}

/// The dataflow, one stage per line, from the Kafka topic to the tables.
pub fn dataflow(t: &Topology, topic: &str) -> String {
    let mut out = String::from("dataflow\n");
    let dims = or_none(t.dimensions.iter().map(|d| d.name.clone()).collect());
    let fields = or_none(t.fields().iter().map(ToString::to_string).collect());
    let _ = writeln!(
        out,
        "  kafka          topic `{topic}` (all topologies of a process share one read)"
    );
    let _ = writeln!(
        out,
        "  → dedup        by event_id: the first copy read wins"
    );
    let _ = writeln!(out, "  → filter       {}", filters_text(t));
    let _ = writeln!(
        out,
        "  → project      user, session id, event type; dimensions: {dims}; numeric fields: {fields}"
    );
    let _ = writeln!(
        out,
        "  → windows      per window: the all-events row + one row per value of each dimension"
    );
    for w in &t.windows {
        let _ = writeln!(out, "                   {}", window_line(w));
    }
    if let Some(s) = &t.sessions {
        let _ = writeln!(
            out,
            "  → sessions     per user: a new session after {} without events, or {} after the \
             session's first event; each session counts in the windows containing its first event, with that \
             event's dimension values",
            human(s.gap_ms),
            human(s.max_duration_ms)
        );
    }
    for kind in [RowTable::Windows, RowTable::Sessions] {
        if t.has(kind) {
            let columns: Vec<String> = t.columns(kind).into_iter().map(|c| c.name).collect();
            let _ = writeln!(
                out,
                "  → clickhouse   {}: {}",
                t.table_name(kind),
                columns.join(", ")
            );
        }
    }
    out
}

/// How long each piece of state lives, and how large it can grow.
pub fn bounds(t: &Topology, grace_ms: u64, longest_ms: u64) -> String {
    let mut out = format!("state bounds (grace {})\n", human(grace_ms));
    let block = longest_ms.min(3_600_000);
    let _ = writeln!(
        out,
        "  dedup          event ids are remembered for the longest window of the enabled \
         topologies ({}) + grace, plus up to {} (ids are kept in buckets): {} to {} after \
         their event time",
        human(longest_ms),
        human(block),
        human(longest_ms + grace_ms),
        human(longest_ms + block + grace_ms)
    );
    for w in &t.windows {
        let open = (w.size_ms + grace_ms).div_ceil(w.slide_ms.max(1));
        let _ = writeln!(
            out,
            "  window {:<7} a window's state lives until the watermark passes its end + grace \
             ({} after its start); about {open} open at once per group",
            w.name,
            human(w.size_ms + grace_ms)
        );
    }
    if let Some(s) = &t.sessions {
        let _ = writeln!(
            out,
            "  sessions       a user's sessions (and their events) are kept until every window \
             their first event counts in has closed; session rows are final {} after their \
             window ends (max_duration + 2 × gap + grace), and an event late by up to that \
             much is applied live unless it touches a session already forgotten",
            human(s.window_delay_ms(grace_ms))
        );
    }
    let groups: Vec<String> = t
        .dimensions
        .iter()
        .map(|d| format!("up to {} values of {}", d.max_values, d.name))
        .collect();
    let _ = writeln!(
        out,
        "  groups         per window: the all-events row{}{}",
        if groups.is_empty() { "" } else { " + " },
        if groups.is_empty() {
            String::new()
        } else {
            format!(
                "{} (further values fold into __other__)",
                groups.join(" + ")
            )
        }
    );
    let distinct: Vec<String> = t
        .columns(RowTable::Windows)
        .into_iter()
        .filter(|c| c.component.is_distinct())
        .map(|c| c.name)
        .collect();
    if !distinct.is_empty() {
        let size = match t.distinct {
            DistinctMode::Exact => "exact: about 16–32 bytes per distinct id",
            DistinctMode::Approx => {
                "approx (HyperLogLog, ±1.6 %): 4 KiB whatever the number of ids"
            }
        };
        let _ = writeln!(
            out,
            "  distinct       {size}, per open window and group, for each of {}",
            distinct.join(", ")
        );
    }
    if t.columns(RowTable::Windows)
        .iter()
        .any(|c| matches!(c.component, Component::FieldSum(_) | Component::FieldMax(_)))
    {
        let _ = writeln!(
            out,
            "  fields         8 bytes per stored column, per open window and group"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_durations() {
        assert_eq!(human(3_605_000), "1h 5s");
        assert_eq!(human(90_000_000 + 5_000), "1d 1h 5s");
        assert_eq!(human(0), "0s");
        assert_eq!(human(1_500), "1s 500ms");
    }
}
