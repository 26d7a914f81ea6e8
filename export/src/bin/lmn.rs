//! `lmn`: inspect, run and time `.lmn` Photonic Execution Graphs, no Python.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use std::io::Write;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lumijax_export::graph::Op;
use lumijax_export::{npy, Limits, Mode, Model, Runtime};

#[derive(Parser)]
#[command(name = "lmn", version, about = "Inspect, run and time .lmn Photonic Execution Graphs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Float products of the stored weights.
    Ideal,
    /// Converters, compensation and bank coupling, no noise.
    Expected,
    /// Expected plus detector noise (seeded).
    Noisy,
}

/// Caps on what running the file may take (FORMAT.md §6.2).
#[derive(Args, Clone, Copy)]
struct Caps {
    /// Peak bytes a run may hold: prepared weights, values and scratch.
    #[arg(long, default_value_t = Limits::default().max_memory_bytes)]
    max_memory: u64,
    /// Multiply-adds a run may take (other ops count 8 per element).
    #[arg(long, default_value_t = Limits::default().max_work)]
    max_work: u64,
}

impl Caps {
    fn open(self, file: &Path) -> Result<Model, String> {
        Model::open_with(file, Limits { max_memory_bytes: self.max_memory, max_work: self.max_work }).map_err(|e| e.to_string())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Validate a file and print a summary.
    Inspect {
        file: PathBuf,
        #[command(flatten)]
        caps: Caps,
    },
    /// Validate a file and run it once on zero inputs in every mode.
    Check {
        file: PathBuf,
        #[command(flatten)]
        caps: Caps,
    },
    /// Run a file on inputs from .npy/.npz and write the outputs.
    Run {
        file: PathBuf,
        /// One .npy (single-input models) or an .npz with the inputs by name.
        #[arg(long)]
        input: PathBuf,
        /// .npy for the first output, .npz for all of them by name.
        #[arg(long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "ideal")]
        mode: ModeArg,
        /// Seed of the noise streams (FORMAT.md §7.3).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        caps: Caps,
    },
    /// Time loading, validation and inference on zero inputs.
    Bench {
        file: PathBuf,
        #[arg(long, default_value_t = 20)]
        iterations: usize,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        caps: Caps,
    },
}

fn mode(arg: ModeArg, seed: u64) -> Mode {
    match arg {
        ModeArg::Ideal => Mode::Ideal,
        ModeArg::Expected => Mode::Expected,
        ModeArg::Noisy => Mode::Noisy { seed },
    }
}

/// The summary of a valid file.
fn inspect(file: &Path, caps: Caps) -> Result<String, String> {
    use std::fmt::Write as _;
    let model = caps.open(file)?;
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let h = &model.header;
    let g = &model.graph;
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    let mut photonic = 0;
    for node in &h.graph.nodes {
        *ops.entry(node.op.as_str()).or_default() += 1;
    }
    for step in &g.steps {
        if matches!(step.op, Op::Linear { .. } | Op::Conv2d { .. } | Op::CausalAttention { .. }) {
            photonic += 1;
        }
    }
    let mut bytes: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for t in model.tensors.values() {
        let entry = bytes.entry(t.dtype.name()).or_default();
        entry.0 += 1;
        entry.1 += t.nbytes;
    }
    let mut out = String::new();
    let mut row = |k: &str, v: String| writeln!(out, "  {k:<22} {v}").expect("writing to a String");
    let p = &model.preamble;
    row("file", format!("{size} bytes, format {}.{}, producer {:?}", p.major, p.minor, h.producer));
    for (k, v) in &h.metadata {
        if k != "config" {
            row(k, v.clone());
        }
    }
    for &i in &g.inputs {
        row("input", format!("{} {} {:?}", g.values[i].name, g.values[i].dtype.name(), g.values[i].shape));
    }
    for &o in &g.outputs {
        row("output", format!("{} {} {:?}", g.values[o].name, g.values[o].dtype.name(), g.values[o].shape));
    }
    row("nodes", format!("{} ({photonic} on the photonic core)", g.steps.len()));
    for (op, count) in ops {
        row(&format!("  {op}"), count.to_string());
    }
    for (dtype, (count, nbytes)) in bytes {
        row(&format!("tensors {dtype}"), format!("{count} ({nbytes} bytes)"));
    }
    for key in ["num_channels", "channel_spacing_nm", "quality_factor", "dac_bits", "adc_bits"] {
        if let Some(v) = h.hardware.get(key) {
            row(key, v.to_string());
        }
    }
    let cost = &model.cost;
    row("run, ideal", format!("{} bytes, {} multiply-adds", cost.ideal.memory_bytes, cost.ideal.work));
    row("run, hardware modes", format!("{} bytes, {} multiply-adds", cost.hardware.memory_bytes, cost.hardware.work));
    Ok(format!("{}\n{out}", file.display()))
}

fn run(file: &Path, input: &Path, output: &Path, mode: Mode, caps: Caps) -> Result<(), String> {
    let runtime = Runtime::new(Arc::new(caps.open(file)?));
    let g = &runtime.model().graph;
    let wanted: Vec<_> = g.inputs.iter().map(|&i| &g.values[i]).collect();
    let inputs = npy::read_inputs(input, &wanted)?;
    let outputs = runtime.run(&inputs, mode).map_err(|e| e.to_string())?;
    let names: Vec<&str> = g.outputs.iter().map(|&o| g.values[o].name.as_str()).collect();
    npy::write_outputs(output, &names, &outputs)
}

fn bench(file: &Path, iterations: usize, json: bool, caps: Caps) -> Result<String, String> {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let start = Instant::now();
    let bytes = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    // SAFETY: read-only map of a file nobody is expected to change meanwhile.
    let map = unsafe { memmap2::Mmap::map(&bytes) }.map_err(|e| e.to_string())?;
    Model::parse_header(&map).map_err(|e| e.to_string())?;
    let header = start.elapsed();
    let start = Instant::now();
    let model = caps.open(file)?;
    let open = start.elapsed();
    let start = Instant::now();
    let runtime = Runtime::new(Arc::new(model));
    let prepare = start.elapsed();
    let inputs = runtime.zero_inputs();
    let start = Instant::now();
    runtime.run(&inputs, Mode::Ideal).map_err(|e| e.to_string())?;
    let first = start.elapsed();
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations.max(1) {
        let start = Instant::now();
        runtime.run(&inputs, Mode::Ideal).map_err(|e| e.to_string())?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    let threads = rayon::current_num_threads();
    Ok(if json {
        format!(
            "{{\"header_ms\": {:.4}, \"open_ms\": {:.4}, \"prepare_ms\": {:.4}, \"first_ms\": {:.4}, \"median_ms\": {median:.4}, \"runs\": {}, \"threads\": {threads}}}\n",
            ms(header), ms(open), ms(prepare), ms(first), times.len()
        )
    } else {
        format!(
            "header parse + validate   {:.3} ms\nopen + validate all       {:.3} ms (checksum and tensor contents too)\nprepare weights           {:.3} ms\nfirst inference           {:.3} ms\nmedian inference          {median:.3} ms over {} runs, {threads} threads\n",
            ms(header), ms(open), ms(prepare), ms(first), times.len()
        )
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Inspect { file, caps } => inspect(file, *caps),
        Command::Check { file, caps } => caps
            .open(file)
            .and_then(|model| Runtime::new(Arc::new(model)).check_on_zeros().map_err(|e| e.to_string()))
            .map(|()| format!("{}: valid; runs in ideal, expected and noisy mode\n", file.display())),
        Command::Run { file, input, output, mode: m, seed, caps } => run(file, input, output, mode(*m, *seed), *caps).map(|()| String::new()),
        Command::Bench { file, iterations, json, caps } => bench(file, *iterations, *json, *caps),
    };
    match result {
        Ok(text) => {
            // A reader that stops early (`| head`) is not an error.
            match std::io::stdout().lock().write_all(text.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("lmn: {e}");
                    ExitCode::from(2)
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(message) => {
            eprintln!("lmn: {}", message.lines().next().unwrap_or("error"));
            ExitCode::from(2)
        }
    }
}
