//! A flow's graph as a Mermaid flowchart.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write;
use std::sync::Arc;

use super::flows::Flow;
use super::graph::{NodeDef, NodeKind, NodeRef};

struct Renderer {
    ids: HashMap<*const NodeDef, String>,
    declared: HashSet<*const NodeDef>,
    out: String,
}

impl Renderer {
    fn id(&mut self, n: &NodeRef) -> String {
        let next = format!("n{}", self.ids.len());
        self.ids.entry(Arc::as_ptr(&n.0)).or_insert(next).clone()
    }

    /// Declares every node reachable from `start` (nested flows as subgraphs), then its edges.
    fn graph(&mut self, start: Option<NodeRef>, indent: &str) {
        // Pass 1: the nodes of this level, in breadth-first order, each once (loops included).
        let mut level = Vec::new();
        let mut seen = HashSet::new();
        let mut queue: VecDeque<NodeRef> = start.into_iter().collect();
        while let Some(n) = queue.pop_front() {
            if !seen.insert(Arc::as_ptr(&n.0)) {
                continue;
            }
            for (_, t) in n.0.successors.read().iter() {
                if let Some(t) = t {
                    queue.push_back(t.clone());
                }
            }
            level.push(n);
        }
        // Pass 2: declarations (a node shared between levels is declared once).
        for n in &level {
            let id = self.id(n);
            if !self.declared.insert(Arc::as_ptr(&n.0)) {
                continue;
            }
            let label = n.name().replace('"', "'");
            let inner = match &n.0.kind {
                NodeKind::Flow(f) => Some(f.start.read().clone()),
                NodeKind::BatchFlow(b) => Some(b.start()),
                NodeKind::Node(_) | NodeKind::Batch { .. } => None,
            };
            match inner {
                Some(inner_start) => {
                    let _ = writeln!(self.out, "{indent}subgraph {id}[\"{label}\"]");
                    self.graph(inner_start, &format!("{indent}    "));
                    let _ = writeln!(self.out, "{indent}end");
                }
                None => {
                    let _ = writeln!(self.out, "{indent}{id}[\"{label}\"]");
                }
            }
        }
        // Pass 3: edges, labelled by action (the default action unlabelled).
        for n in &level {
            let from = self.id(n);
            let succ: Vec<(String, Option<NodeRef>)> =
                n.0.successors.read().iter().map(|(a, t)| (a.to_string(), t.clone())).collect();
            for (action, target) in succ {
                let label = if action == "default" { String::new() } else { format!("|{}|", action.replace('"', "'")) };
                match target {
                    Some(t) => {
                        let to = self.id(&t);
                        let _ = writeln!(self.out, "{indent}{from} -->{label} {to}");
                    }
                    None => {
                        let end = format!("{from}_end_{}", action.replace(|c: char| !c.is_alphanumeric(), "_"));
                        let _ = writeln!(self.out, "{indent}{end}((\"end\"))");
                        let _ = writeln!(self.out, "{indent}{from} -->{label} {end}");
                    }
                }
            }
        }
    }
}

impl Flow {
    /// The flow's graph as a Mermaid flowchart: nodes, action-labelled edges (the `default`
    /// action unlabelled), nested flows as subgraphs; loops are drawn once.
    ///
    /// ```
    /// use flowtrace::prelude::*;
    /// let review = FnNode::new("Review").into_node();
    /// let approve = FnNode::new("Approve").into_node();
    /// let _ = review.on("approve") >> &approve;
    /// let _ = review.on("revise") >> &review;
    /// let chart = Flow::new(&review).to_mermaid();
    /// assert!(chart.contains("-->|approve|"));
    /// assert!(chart.contains("-->|revise|"));
    /// ```
    pub fn to_mermaid(&self) -> String {
        let mut r = Renderer { ids: HashMap::new(), declared: HashSet::new(), out: String::from("flowchart TD\n") };
        r.graph(Some(self.as_node().clone()), "    ");
        r.out
    }
}
