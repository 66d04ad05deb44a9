//! `rmc verify OUT [--json]` and `rmc inspect OUT [--json]`: the Rust side's check of an output
//! folder, answering as `convert verify` does (exit 0 only when everything matches; 8 and the
//! problems otherwise; one `rmc: error: ...` line on stderr for any error).

use std::process::ExitCode;

use rmc_load::{Error, Model};
use serde_json::json;

const USAGE: &str = "usage: rmc verify OUT [--json] | rmc inspect OUT [--json]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let as_json = args.iter().any(|a| a == "--json");
    let rest: Vec<&str> = args.iter().map(String::as_str).filter(|a| *a != "--json").collect();
    let result = match rest.as_slice() {
        ["verify", out] => verify(out, as_json),
        ["inspect", out] => inspect(out, as_json),
        ["--help"] | ["-h"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("rmc: error: {USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rmc: error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn verify(out: &str, as_json: bool) -> Result<(), Error> {
    let report = Model::verify_dir(out)?;
    if as_json {
        println!("{}", report.to_json(std::path::Path::new(out)));
    } else {
        for problem in &report.problems {
            println!("FAIL {problem}");
        }
        if report.ok() {
            println!("ok: {} file(s), {} tensors match the manifest", report.files, report.tensors);
        }
    }
    if report.ok() {
        Ok(())
    } else {
        Err(Error::Mismatch(report.problems))
    }
}

fn inspect(out: &str, as_json: bool) -> Result<(), Error> {
    let model = Model::open(out)?;
    let m = &model.manifest;
    let algorithm = m.digest_algorithm()?.name();
    if as_json {
        let tensors: Vec<_> = m
            .tensors
            .iter()
            .map(|t| json!({"name": t.name, "file": t.file, "dtype": t.dtype, "shape": t.shape, "bytes": t.nbytes()}))
            .collect();
        let modules: Vec<_> = m
            .architecture
            .modules
            .iter()
            .map(|mo| json!({"path": mo.path, "type": mo.kind, "params": mo.params,
                             "tensors": model.module(&mo.path).map(|t| t.names).unwrap_or_default()}))
            .collect();
        let doc = json!({"manifest_version": m.manifest_version, "digest_algorithm": algorithm,
                         "layout": m.target.layout, "format": m.target.format,
                         "files": m.files.iter().map(|f| &f.path).collect::<Vec<_>>(),
                         "tensors": tensors, "aliases": m.aliases, "modules": modules});
        println!("{doc}");
        return Ok(());
    }
    println!(
        "manifest {} ({algorithm}), layout {}, {} file(s), {} tensors, {} aliases",
        m.manifest_version,
        m.target.layout,
        m.files.len(),
        m.tensors.len(),
        m.aliases.len()
    );
    for t in &m.tensors {
        println!("  {:<48} {:<6} {:?} ({} bytes, {})", t.name, t.dtype, t.shape, t.nbytes(), t.file);
    }
    for (alias, kept) in &m.aliases {
        println!("  {alias:<48} -> {kept}");
    }
    for mo in &m.architecture.modules {
        println!("module {} {} {}", mo.path, mo.kind, serde_json::Value::Object(mo.params.clone()));
    }
    Ok(())
}
