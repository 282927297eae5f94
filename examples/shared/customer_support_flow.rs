//! The seed's customer-support flow, shared by `examples/customer_support.rs` and
//! `examples/service.rs`: a ticket classifier, then a router on `route_ticket`, with the
//! seed's rules to the letter (PocketFlow cookbook, `pocketflow-tracing`).

use std::time::Duration;

use flowtrace::prelude::*;
use serde::{Deserialize, Serialize};

/// A support ticket, as the seed's `shared["ticket"]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ticket {
    pub id: String,
    pub subject: String,
    pub description: String,
    pub customer_tier: String,
}

/// What the classifier's `prep` hands to `exec` (the seed's `ticket_data`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TicketData {
    pub subject: String,
    pub description: String,
    pub customer_tier: String,
}

/// The classifier's result, `shared["classification"]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Classification {
    pub priority: String,
    pub category: String,
    pub confidence: f64,
}

/// What the router's `prep` hands to `exec` (the seed's `routing_data`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutingData {
    pub priority: String,
    pub category: String,
    pub customer_tier: String,
}

/// The router's result, `shared["routing"]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Routing {
    pub assigned_team: String,
    pub estimated_response_time: String,
}

/// The seed's `random.uniform(0.8, 0.99)`, without a random-number crate: the clock's
/// nanoseconds mixed, which is all a simulated confidence needs.
fn confidence() -> f64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let mut z = u64::from(nanos).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^= z >> 31;
    0.8 + 0.19 * (z as f64 / u64::MAX as f64)
}

/// The seed's classification: priority `high` if `urgent` is in the subject or `critical` in
/// the description, `medium` if `billing` is in the subject or `payment` in the description,
/// else `low`; category `technical` if `error` is in the description, else `general`.
pub fn classify(t: &TicketData) -> Classification {
    let subject = t.subject.to_lowercase();
    let description = t.description.to_lowercase();
    let priority = if subject.contains("urgent") || description.contains("critical") {
        "high"
    } else if subject.contains("billing") || description.contains("payment") {
        "medium"
    } else {
        "low"
    };
    let category = if description.contains("error") { "technical" } else { "general" };
    Classification { priority: priority.into(), category: category.into(), confidence: confidence() }
}

/// The seed's routing: `escalation` when high, `engineering` when technical, `premium_support`
/// for premium customers, else `general_support`; "2 hours" when high, else "24 hours".
pub fn route(r: &RoutingData) -> Routing {
    let team = if r.priority == "high" {
        "escalation"
    } else if r.category == "technical" {
        "engineering"
    } else if r.customer_tier == "premium" {
        "premium_support"
    } else {
        "general_support"
    };
    let time = if r.priority == "high" { "2 hours" } else { "24 hours" };
    Routing { assigned_team: team.into(), estimated_response_time: time.into() }
}

/// Classifies support tickets by priority and category.
pub struct TicketClassificationNode;

impl Node for TicketClassificationNode {
    type Prep = TicketData;
    type Exec = Classification;

    async fn prep(&self, ctx: &Context<'_>) -> NodeResult<TicketData> {
        let t: Ticket = ctx.shared().require("ticket")?;
        Ok(TicketData { subject: t.subject, description: t.description, customer_tier: t.customer_tier })
    }

    async fn exec(&self, t: &TicketData, _cx: &ExecContext) -> NodeResult<Classification> {
        tokio::time::sleep(Duration::from_millis(100)).await; // the seed's simulated AI classification
        Ok(classify(t))
    }

    async fn post(&self, ctx: &Context<'_>, _t: TicketData, c: Classification) -> NodeResult<Action> {
        ctx.shared().insert("classification", c);
        Ok(Action::new("route_ticket"))
    }
}

/// Routes tickets to teams based on their classification.
pub struct TicketRoutingNode;

impl Node for TicketRoutingNode {
    type Prep = RoutingData;
    type Exec = Routing;

    async fn prep(&self, ctx: &Context<'_>) -> NodeResult<RoutingData> {
        let c: Classification = ctx.shared().require("classification")?;
        let t: Ticket = ctx.shared().require("ticket")?;
        Ok(RoutingData { priority: c.priority, category: c.category, customer_tier: t.customer_tier })
    }

    async fn exec(&self, r: &RoutingData, _cx: &ExecContext) -> NodeResult<Routing> {
        tokio::time::sleep(Duration::from_millis(50)).await; // the seed's simulated routing
        Ok(route(r))
    }

    async fn post(&self, ctx: &Context<'_>, _p: RoutingData, r: Routing) -> NodeResult<Action> {
        ctx.shared().insert("routing", r);
        Ok(Action::new("default"))
    }
}

/// The customer-support flow: classify, then route on `route_ticket`.
pub fn customer_support_flow() -> Flow {
    let classifier = TicketClassificationNode.into_node();
    let router = TicketRoutingNode.into_node();
    let _ = classifier.on("route_ticket") >> &router;
    Flow::named("CustomerSupportFlow", Some(&classifier))
}
