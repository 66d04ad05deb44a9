use rmc_load::nn::{Linear, Recurrent};
use rmc_load::Model;

fn main() -> Result<(), rmc_load::Error> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "out".into());
    let model = Model::open(&out)?; // manifest parsed, every header checked against it
    let problems = model.verify(); // every file and tensor digest (sha256 or blake3)
    assert!(problems.is_empty(), "{problems:?}");

    let layout = &model.manifest.target.layout;
    println!("{} tensors, layout {layout}", model.manifest.tensors.len());
    for name in model.names() {
        let t = model.tensor(name)?; // an alias gives the tensor it is tied to
        println!("{name}: {} {:?}, {} bytes", t.dtype(), t.shape(), t.bytes().len());
    }

    // Modules from the architecture, with their sizes and the stored tensors made from them.
    for lstm in model.modules_of_type("LSTM") {
        let hidden = lstm.module.param_usize("hidden_size")?;
        println!("LSTM {} (hidden {hidden}): {:?}", lstm.module.path, lstm.names);
        let rnn = Recurrent::load_lstm(&model, &lstm.module.path)?;
        let x = vec![0.5f32; 3 * rnn.layers[0].input_size]; // batch 1, 3 steps
        println!("  last output {:?}", &rnn.forward(&x, 1, 3)[2 * hidden..]);
    }
    if let Some(fc) = model.modules_of_type("Linear").next() {
        let linear = Linear::load(&model, &fc.module.path)?; // weight as [out, in] whatever the layout
        let w: Vec<f32> = fc.get("bias")?.to_f32()?; // F32/F16/BF16/F64/integers -> f32
        println!("{}: y = {:?}, bias {w:?}", fc.module.path, linear.forward(&vec![1.0; linear.in_features]));
    }
    Ok(())
}
