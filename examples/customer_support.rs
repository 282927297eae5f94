//! The seed's customer-support flow: a ticket classifier, then a router, run on two tickets.
//!
//! `cargo run --example customer_support`
//!
//! The classifier's `post` returns `route_ticket`, and the flow wires that action to the
//! router (the seed wired `classifier >> router`, so its router never ran: PocketFlow ends a
//! flow when the returned action has no edge). The sleeps stand in for LLM calls and keep the
//! timings in traces like the seed's.

#[path = "shared/customer_support_flow.rs"]
mod customer_support_flow;

use std::time::Duration;

use customer_support_flow::{customer_support_flow, Classification, Routing, Ticket};
use flowtrace::prelude::*;

fn tickets() -> Vec<Ticket> {
    vec![
        Ticket {
            id: "TICKET-001".into(),
            subject: "URGENT: payment system down".into(),
            description: "Checkout fails with error 500 for every customer since 9am.".into(),
            customer_tier: "premium".into(),
        },
        Ticket {
            id: "TICKET-002".into(),
            subject: "Question about my billing address".into(),
            description: "How do I change the address on my invoices?".into(),
            customer_tier: "premium".into(),
        },
    ]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // flowtrace reports through `tracing`; with FLOWTRACE_DEBUG=true it prints each trace's
    // tree there. Show INFO and up on stderr.
    tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_writer(std::io::stderr).init();

    let flow = customer_support_flow();
    for ticket in tickets() {
        let shared = SharedStore::new();
        shared.insert("ticket", ticket.clone());
        let action = flow.traced("CustomerSupportTicketAnalysis").run(&shared).await?;
        let c: Classification = shared.require("classification")?;
        let r: Routing = shared.require("routing")?;
        println!(
            "{}: priority={} category={} -> team={} (flow ended with {action})",
            ticket.id, c.priority, c.category, r.team
        );
    }
    // Traces are delivered off the runs' path; wait for them before the process exits.
    let report = flowtrace::flush(Duration::from_secs(10)).await;
    if !report.is_complete() {
        eprintln!("some spans were not delivered: {report:?}");
    }
    Ok(())
}
