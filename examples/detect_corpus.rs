//! Writes the labelled evaluation corpus of the detectors (`egressd::detect::corpus`): a policy,
//! two days of audit log with injected attacks, and the labels. `benches/detect_eval.sh` runs it.
//!
//! Usage: detect_corpus OUT_DIR [--services N] [--days N] [--metrics-interval SECONDS] [--seed N]

use std::path::PathBuf;

use egressd::detect::corpus::{CorpusSize, write};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: detect_corpus OUT_DIR [--services N] [--days N] [--metrics-interval SECONDS] [--seed N]";
    let out = PathBuf::from(args.next().expect(usage));
    let mut size = CorpusSize::default();
    while let Some(flag) = args.next() {
        let value = args.next().expect(usage);
        match flag.as_str() {
            "--services" => size.services = value.parse().expect("--services N"),
            "--days" => size.days = value.parse().expect("--days N"),
            "--metrics-interval" => size.metrics_interval = value.parse().expect("--metrics-interval SECONDS"),
            "--seed" => size.seed = value.parse().expect("--seed N"),
            _ => panic!("{usage}"),
        }
    }
    let written = write(&out, size)?;
    eprintln!("detect_corpus: {} records, {} labelled attacks in {}", written.records, written.labels, out.display());
    Ok(())
}
