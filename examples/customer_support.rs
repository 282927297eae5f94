//! The seed's customer-support flow: a ticket classifier, then a router, run on two tickets.
//!
//! `cargo run --example customer_support`
//!
//! The classifier's `post` returns `route_ticket`, and the flow wires that action to the
//! router (the seed wired `classifier >> router`, so its router never ran: PocketFlow ends a
//! flow when the returned action has no edge). The sleeps stand in for LLM calls and keep the
//! timings in traces like the seed's.

use std::time::Duration;

use flowtrace::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ticket {
    id: String,
    subject: String,
    description: String,
    customer_tier: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Classification {
    priority: String,
    category: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Routing {
    team: String,
    ticket_id: String,
}

/// Classifies a ticket by priority and category.
struct TicketClassificationNode;

impl Node for TicketClassificationNode {
    type Prep = Ticket;
    type Exec = Classification;

    async fn prep(&self, ctx: &Context<'_>) -> NodeResult<Ticket> {
        Ok(ctx.shared().require("ticket")?)
    }

    async fn exec(&self, t: &Ticket, _cx: &ExecContext) -> NodeResult<Classification> {
        tokio::time::sleep(Duration::from_millis(100)).await; // the seed's simulated LLM call
        let text = format!("{} {}", t.subject, t.description).to_lowercase();
        let priority = if text.contains("urgent") || text.contains("critical") {
            "high"
        } else if text.contains("billing") || text.contains("payment") {
            "medium"
        } else {
            "low"
        };
        let category = if t.description.to_lowercase().contains("error") {
            "technical"
        } else if text.contains("billing") || text.contains("payment") {
            "billing"
        } else {
            "general"
        };
        Ok(Classification { priority: priority.into(), category: category.into() })
    }

    async fn post(&self, ctx: &Context<'_>, _t: Ticket, c: Classification) -> NodeResult<Action> {
        ctx.shared().insert("classification", c);
        Ok(Action::new("route_ticket"))
    }
}

/// Routes a classified ticket to a team.
struct TicketRoutingNode;

impl Node for TicketRoutingNode {
    type Prep = (Ticket, Classification);
    type Exec = Routing;

    async fn prep(&self, ctx: &Context<'_>) -> NodeResult<(Ticket, Classification)> {
        Ok((ctx.shared().require("ticket")?, ctx.shared().require("classification")?))
    }

    async fn exec(&self, (t, c): &(Ticket, Classification), _cx: &ExecContext) -> NodeResult<Routing> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let team = if c.priority == "high" {
            "escalation"
        } else if c.category == "technical" {
            "engineering"
        } else if t.customer_tier == "premium" {
            "premium_support"
        } else {
            "general_support"
        };
        Ok(Routing { team: team.into(), ticket_id: t.id.clone() })
    }

    async fn post(&self, ctx: &Context<'_>, _p: (Ticket, Classification), r: Routing) -> NodeResult<Action> {
        ctx.shared().insert("routing", r);
        Ok(Action::none())
    }
}

/// The customer-support flow: classify, then route on `route_ticket`.
fn customer_support_flow() -> Flow {
    let classifier = TicketClassificationNode.into_node();
    let router = TicketRoutingNode.into_node();
    let _ = classifier.on("route_ticket") >> &router;
    Flow::named("CustomerSupportFlow", Some(&classifier))
}

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
