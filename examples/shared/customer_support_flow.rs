//! The seed's customer-support flow, shared by `examples/customer_support.rs` and
//! `examples/service.rs`: a ticket classifier, then a router on `route_ticket`.

use std::time::Duration;

use flowtrace::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ticket {
    pub id: String,
    pub subject: String,
    pub description: String,
    pub customer_tier: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Classification {
    pub priority: String,
    pub category: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Routing {
    pub team: String,
    pub ticket_id: String,
}

/// Classifies a ticket by priority and category.
pub struct TicketClassificationNode;

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
pub struct TicketRoutingNode;

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
pub fn customer_support_flow() -> Flow {
    let classifier = TicketClassificationNode.into_node();
    let router = TicketRoutingNode.into_node();
    let _ = classifier.on("route_ticket") >> &router;
    Flow::named("CustomerSupportFlow", &classifier)
}
