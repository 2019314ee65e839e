//! Standard output for the commands. Written so that a closed pipe (`egressd ... | head`) ends
//! the output quietly instead of panicking as `println!` does; `out!` and `outln!` take
//! `print!`'s arguments.

use std::io::Write;

/// Writes `text` to standard output; a reader that went away is not an error.
pub fn write(text: &str) {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => eprintln!("egressd: writing output: {e}"),
        Ok(()) => {}
    }
}

macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::output::write(&format!($($arg)*)) };
}

macro_rules! outln {
    () => { $crate::cli::output::write("\n") };
    ($($arg:tt)*) => { $crate::cli::output::write(&format!("{}\n", format_args!($($arg)*))) };
}
