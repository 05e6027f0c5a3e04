//! `drove-agent`: PID 1 of a drove node, or a small on-node client when run as anything else.

fn main() {
    if std::process::id() == 1 {
        drove_agent::pid1::run();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(drove_agent::client::main(&args));
}
