//! Run a reference forward pass over a converted output:
//!
//!     forward OUT INPUT.json OUTPUT.json mlp relu,tanh     # every Linear in order, activations between
//!     forward OUT INPUT.json OUTPUT.json embedding PATH    # input: indices
//!     forward OUT INPUT.json OUTPUT.json lstm PATH         # input [batch, time, features]
//!     forward OUT INPUT.json OUTPUT.json gru PATH
//!     forward OUT INPUT.json OUTPUT.json conv-bn CONV BN   # input [batch, channels, length]
//!     forward OUT INPUT.json OUTPUT.json fann NAME         # a manifest's ruv-FANN network, row by row
//!
//! INPUT.json and OUTPUT.json are `{"shape": [...], "data": [...]}`, row-major.

use rmc_load::nn::{Activation, BatchNorm, Conv1d, Embedding, Mlp, Recurrent};
use rmc_load::{Error, Model, Result};
use serde_json::{json, Value};

fn main() {
    if let Err(e) = run(&std::env::args().skip(1).collect::<Vec<_>>()) {
        eprintln!("forward: error: {e}");
        std::process::exit(e.exit_code());
    }
}

fn run(args: &[String]) -> Result<()> {
    let [out, input, output, kind, rest @ ..] = args else {
        return Err(Error::Unsupported("usage: forward OUT INPUT.json OUTPUT.json MODEL ARGS...".into()));
    };
    let model = Model::open(out)?;
    let doc: Value = serde_json::from_slice(&std::fs::read(input).map_err(|e| Error::Io(input.clone(), e))?)
        .map_err(|e| Error::Corrupt(format!("{input}: {e}")))?;
    let shape: Vec<usize> = serde_json::from_value(doc["shape"].clone()).map_err(|e| Error::Corrupt(format!("{input}: {e}")))?;
    let data: Vec<f32> = serde_json::from_value(doc["data"].clone()).map_err(|e| Error::Corrupt(format!("{input}: {e}")))?;
    let arg = |i: usize| rest.get(i).map(String::as_str).ok_or_else(|| Error::Unsupported(format!("{kind}: missing argument")));
    let (y, y_shape) = match kind.as_str() {
        "mlp" => {
            let acts = arg(0)?.split(',').filter(|s| !s.is_empty()).map(Activation::parse).collect::<Result<Vec<_>>>()?;
            let mlp = Mlp::load(&model, acts)?;
            let y = mlp.forward(&data);
            let mut s = shape.clone();
            *s.last_mut().unwrap() = mlp.layers.last().unwrap().out_features;
            (y, s)
        }
        "embedding" => {
            let emb = Embedding::load(&model, arg(0)?)?;
            let idx: Vec<usize> = data.iter().map(|&v| v as usize).collect();
            let mut s = shape.clone();
            s.push(emb.embedding_dim);
            (emb.forward(&idx)?, s)
        }
        "lstm" | "gru" => {
            let rnn = if kind == "lstm" { Recurrent::load_lstm(&model, arg(0)?)? } else { Recurrent::load_gru(&model, arg(0)?)? };
            (rnn.forward(&data, shape[0], shape[1]), vec![shape[0], shape[1], rnn.hidden_size])
        }
        "conv-bn" => {
            let conv = Conv1d::load(&model, arg(0)?)?;
            let bn = BatchNorm::load(&model, arg(1)?, 1e-5)?;
            let mut y = conv.forward(&data, shape[0], shape[2]);
            bn.forward(&mut y, shape[0]);
            (y, vec![shape[0], conv.out_channels, shape[2] + 1 - conv.kernel])
        }
        "fann" => {
            let mut net = model.network(arg(0)?)?;
            let width = *shape.last().unwrap_or(&0);
            let rows: Vec<Vec<f32>> = data.chunks(width.max(1)).map(|row| net.run(row)).collect();
            let outputs = rows.first().map_or(0, Vec::len);
            let mut s = shape.clone();
            *s.last_mut().unwrap() = outputs;
            (rows.concat(), s)
        }
        other => return Err(Error::Unsupported(format!("unknown model kind {other:?}"))),
    };
    let text = json!({"shape": y_shape, "data": y}).to_string();
    std::fs::write(output, text).map_err(|e| Error::Io(output.clone(), e))
}
