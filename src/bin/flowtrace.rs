//! `flowtrace`: shows a trace file as trees, with a timeline bar per span.
//!
//! ```text
//! flowtrace show [FILE] [--last N] [--trace ID] [--width W]
//! ```
//!
//! `FILE` defaults to `$FLOWTRACE_TRACE_FILE`, else `.flowtrace/traces.jsonl`.

use std::io::BufRead;
use std::process::ExitCode;

use flowtrace::trace::TraceRecord;

const USAGE: &str = "usage: flowtrace show [FILE] [--last N] [--trace ID] [--width W]

Shows the traces in FILE (JSON Lines, one trace a line, as flowtrace writes them) as trees
with a timeline bar per span. FILE defaults to $FLOWTRACE_TRACE_FILE, else
.flowtrace/traces.jsonl.

  --last N     only the last N traces (default: all)
  --trace ID   only the trace whose id starts with ID
  --width W    timeline width in characters (default 32)";

struct Args {
    file: String,
    last: Option<usize>,
    trace: Option<String>,
    width: usize,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    match args.next().as_deref() {
        Some("show") => {}
        Some("-h") | Some("--help") | None => return Err(USAGE.to_owned()),
        Some(other) => return Err(format!("unknown command {other:?}\n\n{USAGE}")),
    }
    let mut a = Args {
        file: std::env::var("FLOWTRACE_TRACE_FILE").unwrap_or_else(|_| flowtrace::trace::DEFAULT_TRACE_FILE.to_owned()),
        last: None,
        trace: None,
        width: 32,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--last" => a.last = Some(value("--last")?.parse().map_err(|e| format!("--last: {e}"))?),
            "--trace" => a.trace = Some(value("--trace")?),
            "--width" => a.width = value("--width")?.parse().map_err(|e| format!("--width: {e}"))?,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            f if f.starts_with("--") => return Err(format!("unknown option {f}\n\n{USAGE}")),
            file => a.file = file.to_owned(),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let file = match std::fs::File::open(&args.file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("flowtrace: cannot open {}: {e}", args.file);
            return ExitCode::from(1);
        }
    };
    let mut lines = Vec::new();
    let mut bad = 0;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("flowtrace: {}: read error at line {}: {e}", args.file, n + 1);
                return ExitCode::from(1);
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<TraceRecord>(&line) {
            Ok(t) => lines.push(t),
            Err(e) => {
                bad += 1;
                eprintln!("flowtrace: {}: line {} is not a trace: {e}", args.file, n + 1);
            }
        }
    }
    // A long run was written in parts as it went: one trace per run again.
    let mut traces = TraceRecord::merge_parts(lines);
    if let Some(prefix) = &args.trace {
        traces.retain(|t| t.trace_id.to_string().starts_with(prefix.as_str()));
    }
    if let Some(n) = args.last {
        let skip = traces.len().saturating_sub(n);
        traces.drain(..skip);
    }
    if traces.is_empty() {
        eprintln!("flowtrace: no traces to show in {}", args.file);
        return ExitCode::from(if bad > 0 { 1 } else { 0 });
    }
    for t in &traces {
        println!("{}  {}", flowtrace::trace::format_timestamp(t.start_unix_nanos), t.render_timeline(args.width));
    }
    ExitCode::SUCCESS
}
