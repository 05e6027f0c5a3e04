//! `drove-sim [NODES...]`: the scale simulation (`drove_agent::sim`) for each cluster size
//! (default 10 100 1000 10000); prints the markdown section for `docs/benchmarks.md` on stdout
//! and one line per size on stderr as it goes. `--csv FILE` also writes imbalance over time;
//! `--no-place` starts every job on its home (no placement at submission), for comparison;
//! `--seed N` draws another cluster and workload (default 7).

fn main() {
    let mut sizes = Vec::new();
    let mut csv = None;
    let mut place = true;
    let mut seed = drove_agent::sim::Setup::new(0).seed;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--csv" {
            csv = args.next();
            continue;
        }
        if a == "--seed" {
            match args.next().and_then(|v| v.parse().ok()) {
                Some(v) => seed = v,
                None => {
                    eprintln!("drove-sim: --seed needs a number");
                    std::process::exit(2);
                }
            }
            continue;
        }
        if a == "--no-place" {
            place = false;
            continue;
        }
        match a.parse::<u32>() {
            Ok(n) if (2..=100_000).contains(&n) => sizes.push(n),
            _ => {
                eprintln!(
                    "usage: drove-sim [--csv FILE] [--no-place] [--seed N] [NODES (2-100000)...]"
                );
                std::process::exit(2);
            }
        }
    }
    if sizes.is_empty() {
        sizes = vec![10, 100, 1000, 10_000];
    }
    let mut reports = Vec::new();
    let setup = drove_agent::sim::Setup {
        place,
        seed,
        ..drove_agent::sim::Setup::new(0)
    };
    for n in sizes {
        let r = drove_agent::sim::run(&drove_agent::sim::Setup {
            nodes: n,
            progress: true,
            ..setup.clone()
        });
        let profile: Vec<String> = r
            .profile
            .iter()
            .map(|(part, s)| format!("{part} {s:.1}"))
            .collect();
        eprintln!(
            "drove-sim: {n} nodes: {:.2} msgs/node/s, down everywhere {:?} ms, {} false downs, worst imbalance after 30 s {:.2}, {:.2} migrations/job, {} of {} jobs placed away from home, {:.1} s wall, {:.1} s CPU, peak RSS {} MB (seconds: {})",
            r.msgs_per_node_s,
            r.down_everywhere_ms,
            r.false_downs,
            r.imbalance_after_30s(),
            r.migrations_per_job(),
            r.placed,
            r.jobs,
            r.wall_s,
            r.cpu_s,
            r.peak_rss_kb / 1024,
            profile.join(", ")
        );
        if let Some(m) = &r.memory {
            let per_row = |bytes: u64| bytes as f64 / m.rows.max(1) as f64;
            eprintln!(
                "drove-sim: {n} nodes: memory at the end: {} MB of heap in use for {} member rows ({:.0} B a row; peak RSS {:.0} B a row); dropping the nodes freed {} MB ({:.0} B a row); {} distinct shared entries, {} MB ({:.1} B a row); a compacted table alone: {:.1} B a row ({} B row and key)",
                m.heap >> 20,
                m.rows,
                per_row(m.heap),
                per_row(r.peak_rss_kb * 1024),
                m.nodes >> 20,
                per_row(m.nodes),
                m.entries,
                m.entry_bytes >> 20,
                per_row(m.entry_bytes),
                m.btree_per_row,
                m.row_size
            );
            let side: Vec<String> = m
                .side
                .iter()
                .map(|(name, len, bytes)| {
                    format!("{name} {len} entries, {:.1} B a row", per_row(*bytes))
                })
                .collect();
            eprintln!(
                "drove-sim: {n} nodes: tables beside the member tables (by capacity): {}",
                side.join("; ")
            );
        }
        if !r.worst_node.is_empty() {
            let (even_then, even_worst) = r.even_after_30s();
            eprintln!(
                "drove-sim: {n} nodes: the most loaded nodes at the worst second: {}; that second's jobs spread as evenly as whole jobs allow: {even_then:.2} (worst such second after 30 s: {even_worst:.2})",
                r.worst_node
            );
        }
        reports.push(r);
    }
    if let Some(path) = csv {
        if let Err(e) = std::fs::write(&path, drove_agent::sim::csv(&reports)) {
            eprintln!("drove-sim: cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
    print!("{}", drove_agent::sim::markdown(&reports, &setup));
}
