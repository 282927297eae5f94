//! The seed's customer-support flow (PocketFlow's `pocketflow-tracing` cookbook), to the
//! letter: its two tickets, its classification and routing rules, its trace name, and its
//! output per ticket. TICKET-001 goes to `escalation`, TICKET-002 to `general_support`.
//!
//! `cargo run --example customer_support`
//!
//! The classifier's `post` returns `route_ticket`, and the flow wires that action to the
//! router (the seed wired `classifier >> router`, so its router never ran: PocketFlow ends a
//! flow when the returned action has no edge, and the seed's `shared['routing']` lookup then
//! fails). The sleeps stand in for LLM calls and keep the timings in traces like the seed's.

#[path = "shared/customer_support_flow.rs"]
mod customer_support_flow;

use std::time::Duration;

use customer_support_flow::{customer_support_flow, Classification, Routing, Ticket};
use flowtrace::prelude::*;

/// The seed's sample tickets, verbatim.
fn tickets() -> Vec<Ticket> {
    vec![
        Ticket {
            id: "TICKET-001".into(),
            subject: "URGENT: Payment processing error".into(),
            description: "Customer cannot complete payment, getting error 500".into(),
            customer_tier: "premium".into(),
        },
        Ticket {
            id: "TICKET-002".into(),
            subject: "Question about billing cycle".into(),
            description: "When does my billing cycle reset?".into(),
            customer_tier: "standard".into(),
        },
    ]
}

/// `{'priority': 'high', 'category': 'technical', 'confidence': 0.93}`, as the seed prints it.
fn show_classification(c: &Classification) -> String {
    format!("{{'priority': '{}', 'category': '{}', 'confidence': {}}}", c.priority, c.category, c.confidence)
}

/// `{'assigned_team': 'escalation', 'estimated_response_time': '2 hours'}`.
fn show_routing(r: &Routing) -> String {
    format!("{{'assigned_team': '{}', 'estimated_response_time': '{}'}}", r.assigned_team, r.estimated_response_time)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // flowtrace reports through `tracing`; with FLOWTRACE_DEBUG=true it prints each trace's
    // tree there. Show INFO and up on stderr.
    tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_writer(std::io::stderr).init();

    println!("🎫 Customer Support Ticket Analysis");
    println!("{}", "=".repeat(40));
    let flow = customer_support_flow();
    for ticket in tickets() {
        println!("\n📥 Processing {}: {}", ticket.id, ticket.subject);
        let shared = SharedStore::new();
        shared.insert("ticket", ticket.clone());
        let result = flow.traced("CustomerSupportTicketAnalysis").run(&shared).await?;
        let c: Classification = shared.require("classification")?;
        let r: Routing = shared.require("routing")?;
        println!("📊 Classification: {}", show_classification(&c));
        println!("🎯 Routing: {}", show_routing(&r));
        println!("✅ Result: {result}");
    }
    // Traces are delivered off the runs' path; wait for them before the process exits.
    let report = flowtrace::flush(Duration::from_secs(10)).await;
    if !report.is_complete() {
        eprintln!("some spans were not delivered: {report:?}");
    }
    println!("\n📈 Check your Langfuse dashboard to see detailed traces!");
    Ok(())
}
