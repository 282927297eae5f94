//! `flowtrace`: shows trace files as trees (being built).

fn main() {
    eprintln!("flowtrace: the trace viewer is not built yet");
    std::process::exit(2);
}
