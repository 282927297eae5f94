//! PocketFlow's agent loop with a real LLM: decide → search → decide … → answer, each call to
//! an OpenAI-compatible chat-completions endpoint recorded as a Langfuse generation (model,
//! messages, output, the response's token usage).
//!
//! ```text
//! OPENAI_API_KEY=sk-... cargo run --example llm_agent -- "Who won the 2024 Nobel Prize in Physics?"
//! ```
//!
//! | variable | default |
//! |---|---|
//! | `OPENAI_BASE_URL` | `https://api.openai.com/v1` (any OpenAI-compatible server: vLLM, Ollama, LiteLLM) |
//! | `OPENAI_API_KEY` | required unless the base URL is on localhost / 127.0.0.1 |
//! | `OPENAI_MODEL` | `gpt-4o-mini` |
//!
//! Tracing is configured as usual (`LANGFUSE_*`, or the local trace file). The search tool
//! looks in a small built-in set of notes, so the example needs no search API; a real agent
//! would call one there. A 429 (with `Retry-After`) or a 5xx fails the attempt, and the node's
//! retries absorb it; the failed call shows as a failed generation under its attempt.

use std::sync::Arc;
use std::time::Duration;

use flowtrace::prelude::*;
use serde_json::{json, Value};

/// How many times the agent may search before it must answer.
const MAX_SEARCHES: usize = 3;

/// The longest `Retry-After` honoured inside one attempt.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// An OpenAI-compatible chat-completions client.
#[derive(Clone)]
pub struct Llm {
    http: reqwest::Client,
    url: String,
    key: Option<String>,
    model: String,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Llm").field("url", &self.url).field("model", &self.model).finish()
    }
}

/// Why an LLM call failed.
#[derive(Debug, thiserror::Error)]
enum LlmError {
    #[error("HTTP {status} from the LLM endpoint: {body}")]
    Status { status: u16, body: String },
    #[error("the LLM request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("the LLM answer has no message content: {0}")]
    Shape(String),
}

impl Llm {
    fn from_env() -> Result<Llm, String> {
        let base = std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "https://api.openai.com/v1".into());
        let base = base.trim_end_matches('/').to_owned();
        let local = base.contains("://127.0.0.1") || base.contains("://localhost");
        let key = std::env::var("OPENAI_API_KEY").ok().filter(|k| !k.trim().is_empty());
        if key.is_none() && !local {
            return Err("OPENAI_API_KEY is not set (needed for a non-local OPENAI_BASE_URL)".into());
        }
        let model = std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into());
        Llm::new(&base, key, model)
    }

    /// A client for `{base}/chat/completions`.
    pub fn new(base: &str, key: Option<String>, model: String) -> Result<Llm, String> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().map_err(|e| e.to_string())?;
        Ok(Llm { http, url: format!("{}/chat/completions", base.trim_end_matches('/')), key, model })
    }

    /// One chat completion, recorded as a generation named `name` under the attempt.
    async fn chat(&self, cx: &ExecContext, name: &str, messages: Value) -> Result<String, LlmError> {
        let params = json!({ "temperature": 0.0 });
        let g = Generation::new(name.to_owned())
            .model(self.model.clone())
            .model_parameter("temperature", 0.0)
            .input(&messages);
        let mut req = self.http.post(&self.url).json(&json!({
            "model": self.model,
            "messages": messages,
            "temperature": params["temperature"],
        }));
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                cx.generation(g.failed(e.to_string()));
                return Err(e.into());
            }
        };
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = resp.text().await.unwrap_or_default();
            let err = LlmError::Status { status: status.as_u16(), body: body.chars().take(200).collect() };
            cx.generation(g.failed(err.to_string()));
            // A rate limit says when to come back: wait that long before this attempt fails,
            // so the node's retry is not refused again at once.
            if let Some(wait) = retry_after {
                tokio::time::sleep(wait.min(MAX_RETRY_AFTER)).await;
            }
            return Err(err);
        }
        let body: Value = resp.json().await?;
        let content = body["choices"][0]["message"]["content"].as_str().map(str::to_owned);
        let Some(content) = content else {
            let err = LlmError::Shape(body.to_string().chars().take(200).collect());
            cx.generation(g.failed(err.to_string()));
            return Err(err);
        };
        let mut g = g.output(&body["choices"][0]["message"]);
        // The response's usage, every kind of token it reports.
        let usage = &body["usage"];
        if let (Some(i), Some(o)) = (usage["prompt_tokens"].as_u64(), usage["completion_tokens"].as_u64()) {
            g = g.usage(i, o);
        }
        if let Some(t) = usage["total_tokens"].as_u64() {
            g = g.usage_detail("total", t);
        }
        if let Some(c) = usage["prompt_tokens_details"]["cached_tokens"].as_u64() {
            g = g.usage_detail("input_cached_tokens", c);
        }
        if let Some(r) = usage["completion_tokens_details"]["reasoning_tokens"].as_u64() {
            g = g.usage_detail("output_reasoning_tokens", r);
        }
        if let Some(m) = body["model"].as_str() {
            g = g.model(m);
        }
        cx.generation(g);
        Ok(content)
    }
}

/// The first JSON object in a model's reply (models like to wrap it in prose or fences).
fn json_in(text: &str) -> Option<Value> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    serde_json::from_str(text.get(start..=end)?).ok()
}

/// The built-in notes the search tool looks in.
const NOTES: &[(&str, &str)] = &[
    ("nobel physics 2024", "The 2024 Nobel Prize in Physics went to John J. Hopfield and Geoffrey E. Hinton for foundational work on machine learning with artificial neural networks."),
    ("pocketflow", "PocketFlow is a 100-line LLM framework: nodes with prep/exec/post, flows of action-labelled edges."),
    ("langfuse", "Langfuse is an open-source LLM engineering platform: traces, generations, prompts, evaluations."),
];

fn search_notes(query: &str) -> Vec<&'static str> {
    let q = query.to_lowercase();
    let words: Vec<&str> = q.split(|c: char| !c.is_alphanumeric()).filter(|w| w.len() > 2).collect();
    let mut hits: Vec<(usize, &str)> = NOTES
        .iter()
        .map(|(k, text)| (words.iter().filter(|w| k.contains(**w) || text.to_lowercase().contains(**w)).count(), *text))
        .filter(|(n, _)| *n > 0)
        .collect();
    hits.sort_by_key(|h| std::cmp::Reverse(h.0));
    hits.into_iter().take(2).map(|(_, t)| t).collect()
}

/// The agent: `DecideAction` (an agent) loops through `SearchWeb` (a tool) until it decides
/// to answer with `AnswerQuestion`.
pub fn build_flow(llm: Arc<Llm>) -> Flow {
    let decide_llm = Arc::clone(&llm);
    let decide = FnNode::new("DecideAction")
        .prep(|ctx| {
            Ok(json!({
                "question": ctx.shared().get_json("question").unwrap_or(Value::Null),
                "context": ctx.shared().get_json("context").unwrap_or(json!([])),
                "searches": ctx.shared().get_json("searches").unwrap_or(json!(0)),
            }))
        })
        .exec(move |p, cx| {
            let llm = Arc::clone(&decide_llm);
            async move {
                let can_search = p["searches"].as_u64().unwrap_or(0) < MAX_SEARCHES as u64;
                let system = format!(
                    "You are a research agent. Decide the next step. Reply with one JSON object: \
                     {{\"action\": \"search\", \"query\": \"...\", \"reason\": \"...\"}} to look something up{}, or \
                     {{\"action\": \"answer\", \"reason\": \"...\"}} when the context is enough.",
                    if can_search { "" } else { " (no searches left: you must answer)" }
                );
                let user = format!("Question: {}\nContext so far: {}", p["question"], p["context"]);
                let messages = json!([{"role": "system", "content": system}, {"role": "user", "content": user}]);
                let reply = llm.chat(&cx, "decide", messages).await?;
                let mut d = json_in(&reply).ok_or_else(|| format!("no JSON decision in the reply: {reply}"))?;
                if !can_search {
                    d["action"] = json!("answer");
                }
                Ok(d)
            }
        })
        .post(|ctx, _, d| {
            if d["action"] == "search" {
                ctx.shared().insert("query", d["query"].clone());
                ctx.shared().update("searches", || 0_u64, |n| *n += 1)?;
                Ok(Action::new("search"))
            } else {
                Ok(Action::new("answer"))
            }
        })
        .into_node()
        .max_retries(3)
        .wait(Duration::from_millis(200))
        .observation_type(ObservationType::Agent);

    let search = FnNode::new("SearchWeb")
        .prep(|ctx| Ok(ctx.shared().get_json("query").unwrap_or(Value::Null)))
        .exec(|q, _| async move {
            let q = q.as_str().unwrap_or("").to_owned();
            let hits = search_notes(&q);
            Ok(json!({ "query": q, "results": hits }))
        })
        .post(|ctx, _, r| {
            ctx.shared().update("context", Vec::<Value>::new, |c| c.push(r.clone()))?;
            Ok(Action::new("decide"))
        })
        .into_node()
        .observation_type(ObservationType::Tool);

    let answer_llm = Arc::clone(&llm);
    let answer = FnNode::new("AnswerQuestion")
        .prep(|ctx| {
            Ok(json!({
                "question": ctx.shared().get_json("question").unwrap_or(Value::Null),
                "context": ctx.shared().get_json("context").unwrap_or(json!([])),
            }))
        })
        .exec(move |p, cx| {
            let llm = Arc::clone(&answer_llm);
            async move {
                let messages = json!([
                    {"role": "system", "content": "Answer the question from the context, in one or two sentences."},
                    {"role": "user", "content": format!("Question: {}\nContext: {}", p["question"], p["context"])},
                ]);
                Ok(json!(llm.chat(&cx, "answer", messages).await?))
            }
        })
        .post(|ctx, _, a| {
            ctx.shared().insert("answer", a);
            Ok(Action::new("done"))
        })
        .into_node()
        .max_retries(3)
        .wait(Duration::from_millis(200))
        .observation_type(ObservationType::Chain);

    let _ = decide.on("search") >> &search;
    let _ = decide.on("answer") >> &answer;
    let _ = search.on("decide") >> &decide;
    Flow::named("ResearchAgent", Some(&decide))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_writer(std::io::stderr).init();
    let question =
        std::env::args().nth(1).unwrap_or_else(|| "Who won the 2024 Nobel Prize in Physics, and for what?".to_owned());
    let llm = Arc::new(Llm::from_env()?);
    let flow = build_flow(llm);
    let shared = SharedStore::new();
    shared.insert("question", question.clone());
    println!("🤔 {question}");
    let result = flow.traced("ResearchAgent").tag("llm-agent").run(&shared).await;
    let report = flowtrace::flush(Duration::from_secs(10)).await;
    if !report.is_complete() {
        eprintln!("some spans were not delivered: {report:?}");
    }
    result?;
    let searches: u64 = shared.get("searches")?.unwrap_or(0);
    println!("🔎 searches: {searches}");
    println!("💬 {}", shared.get::<String>("answer")?.unwrap_or_default());
    Ok(())
}
