//! `tensor OUT NAME`: one tensor as the crate gives it (an alias re-tied to its stored tensor), as
//! JSON: dtype, shape, its bytes in hex, and its values as f32 bit patterns (exact, NaN included).

use rmc_load::{Model, Result};
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("tensor: error: {e}");
        std::process::exit(e.exit_code());
    }
}

fn run(args: &[String]) -> Result<()> {
    let [out, name] = args else {
        eprintln!("usage: tensor OUT NAME");
        std::process::exit(2);
    };
    let model = Model::open(out)?;
    let t = model.tensor(name)?;
    let hex: String = t.bytes().iter().map(|b| format!("{b:02x}")).collect();
    let bits = t.to_f32().ok().map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>());
    let doc = json!({"name": t.name, "stored": t.entry.name, "dtype": t.dtype(), "shape": t.shape(),
                     "hex": hex, "f32_bits": bits});
    println!("{doc}");
    Ok(())
}
