//! For the schema test: `schema fields` prints the skeleton of every field the Rust manifest types
//! read; `schema roundtrip IN OUT` reads a manifest into the types and writes it back.

use rmc_load::manifest::Manifest;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["fields"] => println!("{}", rmc_load::probe::skeleton::<Manifest>().expect("probe")),
        ["roundtrip", input, output] => {
            let bytes = std::fs::read(input).expect("read");
            match Manifest::from_slice(&bytes) {
                Ok(m) => std::fs::write(output, serde_json::to_vec_pretty(&m).expect("serialize")).expect("write"),
                Err(e) => {
                    eprintln!("schema: error: {e}");
                    std::process::exit(e.exit_code());
                }
            }
        }
        _ => {
            eprintln!("usage: schema fields | schema roundtrip IN OUT");
            std::process::exit(2);
        }
    }
}
