//! Reference forward passes over converted outputs: executable documentation of how each layout
//! stores a layer. Each loader reads a module's tensors the way its layout names and shapes them
//! and brings them to one in-memory form (PyTorch's: weights [out, in], gates packed in order);
//! the forward passes are plain loops, for inference on small inputs (f32, row-major).
//!
//! Layouts: `pytorch` (also `tch`, `candle`): PyTorch names and shapes. `burn`: LSTM/GRU split
//! into gate modules (`input_gate.input_transform.weight`, ...), Linear weights still [out, in]
//! (burn's PyTorch adapter transposes them), BatchNorm `gamma`/`beta` for `weight`/`bias`.
//! `burn-native`: as burn, but every Linear and gate weight [in, out].

use crate::error::{Error, Result};
use crate::model::{Model, ModuleTensors};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    PyTorch,
    Burn,
    BurnNative,
}

impl Layout {
    pub fn of(model: &Model) -> Result<Layout> {
        match model.manifest.target.layout.as_str() {
            "pytorch" | "tch" | "candle" => Ok(Layout::PyTorch),
            "burn" => Ok(Layout::Burn),
            "burn-native" => Ok(Layout::BurnNative),
            other => Err(Error::Unsupported(format!("no reference forward pass for layout {other:?}"))),
        }
    }

    /// Whether this layout stores Linear (and gate) weights as [in, out].
    fn in_out(self) -> bool {
        self == Layout::BurnNative
    }
}

fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = w[r * cols + c];
        }
    }
    out
}

fn kind_is(m: &ModuleTensors, kind: &str) -> Result<()> {
    if m.module.kind == kind {
        Ok(())
    } else {
        Err(Error::Mismatch(vec![format!("module {:?} is a {}, not a {kind}", m.module.path, m.module.kind)]))
    }
}

/// `y = x W^T + b`, W [out, in].
#[derive(Debug, Clone)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    pub fn load(model: &Model, path: &str) -> Result<Linear> {
        let m = model.module(path)?;
        kind_is(&m, "Linear")?;
        let (i, o) = (m.module.param_usize("in_features")?, m.module.param_usize("out_features")?);
        let weight = if Layout::of(model)?.in_out() {
            transpose(&m.get("weight")?.f32_with_shape(&[i, o])?, i, o) // burn-native: [in, out]
        } else {
            m.get("weight")?.f32_with_shape(&[o, i])?
        };
        let bias = if m.has("bias") { Some(m.get("bias")?.f32_with_shape(&[o])?) } else { None };
        Ok(Linear { in_features: i, out_features: o, weight, bias })
    }

    /// x [n, in] -> [n, out]
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        affine(x, &self.weight, self.bias.as_deref(), self.in_features, self.out_features)
    }
}

/// rows of x [n, i] times W^T (W [o, i]) plus b.
fn affine(x: &[f32], w: &[f32], b: Option<&[f32]>, i: usize, o: usize) -> Vec<f32> {
    let n = x.len() / i;
    let mut y = vec![0.0f32; n * o];
    for r in 0..n {
        let xr = &x[r * i..(r + 1) * i];
        for c in 0..o {
            let wr = &w[c * i..(c + 1) * i];
            let dot: f32 = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
            y[r * o + c] = dot + b.map_or(0.0, |b| b[c]);
        }
    }
    y
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    Tanh,
    Sigmoid,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Activation> {
        Ok(match name {
            "none" | "identity" => Activation::Identity,
            "relu" => Activation::Relu,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            other => return Err(Error::Unsupported(format!("unknown activation {other:?}"))),
        })
    }

    pub fn apply(self, v: f32) -> f32 {
        match self {
            Activation::Identity => v,
            Activation::Relu => v.max(0.0),
            Activation::Tanh => v.tanh(),
            Activation::Sigmoid => sigmoid(v),
        }
    }
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// Linear layers in the architecture's order with an activation after each but the last. The
/// manifest has no activations (they hold no tensors): the caller names them.
pub struct Mlp {
    pub layers: Vec<Linear>,
    pub activations: Vec<Activation>,
}

impl Mlp {
    pub fn load(model: &Model, activations: Vec<Activation>) -> Result<Mlp> {
        let layers = model
            .modules_of_type("Linear")
            .map(|m| Linear::load(model, &m.module.path))
            .collect::<Result<Vec<_>>>()?;
        if layers.len() != activations.len() + 1 {
            return Err(Error::Mismatch(vec![format!(
                "{} Linear modules need {} activations between them, got {}",
                layers.len(),
                layers.len().saturating_sub(1),
                activations.len()
            )]));
        }
        Ok(Mlp { layers, activations })
    }

    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut h = self.layers[0].forward(x);
        for (layer, act) in self.layers[1..].iter().zip(&self.activations) {
            h.iter_mut().for_each(|v| *v = act.apply(*v));
            h = layer.forward(&h);
        }
        h
    }
}

/// Rows of `weight` [num_embeddings, embedding_dim], the same in every layout.
pub struct Embedding {
    pub num_embeddings: usize,
    pub embedding_dim: usize,
    pub weight: Vec<f32>,
}

impl Embedding {
    pub fn load(model: &Model, path: &str) -> Result<Embedding> {
        let m = model.module(path)?;
        kind_is(&m, "Embedding")?;
        let (n, d) = (m.module.param_usize("num_embeddings")?, m.module.param_usize("embedding_dim")?);
        Ok(Embedding { num_embeddings: n, embedding_dim: d, weight: m.get("weight")?.f32_with_shape(&[n, d])? })
    }

    /// indices [...] -> [..., embedding_dim]
    pub fn forward(&self, indices: &[usize]) -> Result<Vec<f32>> {
        let d = self.embedding_dim;
        let mut out = Vec::with_capacity(indices.len() * d);
        for &i in indices {
            if i >= self.num_embeddings {
                return Err(Error::Mismatch(vec![format!("index {i} out of range for {} embeddings", self.num_embeddings)]));
            }
            out.extend_from_slice(&self.weight[i * d..(i + 1) * d]);
        }
        Ok(out)
    }
}

/// One recurrent layer, PyTorch's packing: w_ih [G*H, in], w_hh [G*H, H], biases [G*H] (zeros
/// when the module has none), gates in PyTorch's order (LSTM i, f, g, o; GRU r, z, n).
#[derive(Debug, Clone)]
pub struct RecurrentLayer {
    pub input_size: usize,
    pub w_ih: Vec<f32>,
    pub w_hh: Vec<f32>,
    pub b_ih: Vec<f32>,
    pub b_hh: Vec<f32>,
}

const LSTM_GATES: [&str; 4] = ["input_gate", "forget_gate", "cell_gate", "output_gate"];
const GRU_GATES: [&str; 3] = ["reset_gate", "update_gate", "new_gate"];

/// A stack of unidirectional LSTM or GRU layers, batch-first.
#[derive(Debug, Clone)]
pub struct Recurrent {
    pub gru: bool,
    pub hidden_size: usize,
    pub layers: Vec<RecurrentLayer>,
}

impl Recurrent {
    pub fn load_lstm(model: &Model, path: &str) -> Result<Recurrent> {
        Recurrent::load(model, path, "LSTM", &LSTM_GATES)
    }

    pub fn load_gru(model: &Model, path: &str) -> Result<Recurrent> {
        Recurrent::load(model, path, "GRU", &GRU_GATES)
    }

    fn load(model: &Model, path: &str, kind: &str, gates: &[&str]) -> Result<Recurrent> {
        let layout = Layout::of(model)?;
        let m = model.module(path)?;
        kind_is(&m, kind)?;
        let module = m.module;
        if module.param_bool("bidirectional") == Some(true) || module.params.get("proj_size").and_then(|v| v.as_u64()).unwrap_or(0) > 0 {
            return Err(Error::Unsupported(format!("module {path:?}: bidirectional or projected {kind} has no reference pass here")));
        }
        let (h, layers) = (module.param_usize("hidden_size")?, module.param_usize("num_layers")?);
        let g = gates.len();
        let mut out = Vec::with_capacity(layers);
        for k in 0..layers {
            let input = if k == 0 { module.param_usize("input_size")? } else { h };
            let layer = match layout {
                // PyTorch: weight_ih_l{k} [G*H, in] with the gates stacked along rows.
                Layout::PyTorch => {
                    let packed = |name: &str, cols: usize| -> Result<Vec<f32>> {
                        let shape: Vec<usize> = if cols == 0 { vec![g * h] } else { vec![g * h, cols] };
                        if m.has(name) { m.get(name)?.f32_with_shape(&shape) } else { Ok(vec![0.0; g * h]) }
                    };
                    RecurrentLayer {
                        input_size: input,
                        w_ih: m.get(&format!("weight_ih_l{k}"))?.f32_with_shape(&[g * h, input])?,
                        w_hh: m.get(&format!("weight_hh_l{k}"))?.f32_with_shape(&[g * h, h])?,
                        b_ih: packed(&format!("bias_ih_l{k}"), 0)?,
                        b_hh: packed(&format!("bias_hh_l{k}"), 0)?,
                    }
                }
                // burn: `{k}.` before the gates only when there are several layers; each gate a
                // Linear per input (`input_transform`) and per hidden state (`hidden_transform`).
                Layout::Burn | Layout::BurnNative => {
                    let prefix = if layers > 1 { format!("{k}.") } else { String::new() };
                    let mut layer = RecurrentLayer { input_size: input, w_ih: vec![], w_hh: vec![], b_ih: vec![], b_hh: vec![] };
                    for gate in gates {
                        for (which, cols) in [("input_transform", input), ("hidden_transform", h)] {
                            let base = format!("{prefix}{gate}.{which}");
                            let w = m.get(&format!("{base}.weight"))?;
                            let w = if layout.in_out() {
                                transpose(&w.f32_with_shape(&[cols, h])?, cols, h)
                            } else {
                                w.f32_with_shape(&[h, cols])?
                            };
                            let bias_name = format!("{base}.bias");
                            let b = if m.has(&bias_name) { m.get(&bias_name)?.f32_with_shape(&[h])? } else { vec![0.0; h] };
                            let (wd, bd) = if which == "input_transform" {
                                (&mut layer.w_ih, &mut layer.b_ih)
                            } else {
                                (&mut layer.w_hh, &mut layer.b_hh)
                            };
                            wd.extend(w);
                            bd.extend(b);
                        }
                    }
                    layer
                }
            };
            out.push(layer);
        }
        Ok(Recurrent { gru: kind == "GRU", hidden_size: h, layers: out })
    }

    /// x [batch, time, input] -> the last layer's outputs [batch, time, hidden], zero initial state.
    pub fn forward(&self, x: &[f32], batch: usize, time: usize) -> Vec<f32> {
        let h = self.hidden_size;
        let mut seq = x.to_vec();
        for layer in &self.layers {
            let mut next = vec![0.0f32; batch * time * h];
            for b in 0..batch {
                let mut state = vec![0.0f32; h];
                let mut cell = vec![0.0f32; h];
                for t in 0..time {
                    let xt = &seq[(b * time + t) * layer.input_size..(b * time + t + 1) * layer.input_size];
                    let gi = affine(xt, &layer.w_ih, Some(&layer.b_ih), layer.input_size, layer.b_ih.len());
                    let gh = affine(&state, &layer.w_hh, Some(&layer.b_hh), h, layer.b_hh.len());
                    for j in 0..h {
                        if self.gru {
                            let r = sigmoid(gi[j] + gh[j]);
                            let z = sigmoid(gi[h + j] + gh[h + j]);
                            let n = (gi[2 * h + j] + r * gh[2 * h + j]).tanh();
                            state[j] = (1.0 - z) * n + z * state[j];
                        } else {
                            let i = sigmoid(gi[j] + gh[j]);
                            let f = sigmoid(gi[h + j] + gh[h + j]);
                            let g = (gi[2 * h + j] + gh[2 * h + j]).tanh();
                            let o = sigmoid(gi[3 * h + j] + gh[3 * h + j]);
                            cell[j] = f * cell[j] + i * g;
                            state[j] = o * cell[j].tanh();
                        }
                    }
                    next[(b * time + t) * h..(b * time + t + 1) * h].copy_from_slice(&state);
                }
            }
            seq = next;
        }
        seq
    }
}

/// Conv1d with stride 1, no padding, no dilation, one group: weight [out, in, k] in every layout
/// (the manifest records sizes from shapes only, so other strides are the caller's to know).
pub struct Conv1d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

impl Conv1d {
    pub fn load(model: &Model, path: &str) -> Result<Conv1d> {
        let m = model.module(path)?;
        kind_is(&m, "Conv1d")?;
        let (o, i) = (m.module.param_usize("out_channels")?, m.module.param_usize("in_channels_per_group")?);
        let k = m.get("weight")?.shape().get(2).copied().unwrap_or(0) as usize;
        let weight = m.get("weight")?.f32_with_shape(&[o, i, k])?;
        let bias = if m.has("bias") { Some(m.get("bias")?.f32_with_shape(&[o])?) } else { None };
        Ok(Conv1d { in_channels: i, out_channels: o, kernel: k, weight, bias })
    }

    /// x [batch, in, length] -> [batch, out, length - k + 1]
    pub fn forward(&self, x: &[f32], batch: usize, length: usize) -> Vec<f32> {
        let (ci, co, k) = (self.in_channels, self.out_channels, self.kernel);
        let lo = length + 1 - k;
        let mut y = vec![0.0f32; batch * co * lo];
        for b in 0..batch {
            for o in 0..co {
                for p in 0..lo {
                    let mut acc = self.bias.as_ref().map_or(0.0, |b| b[o]);
                    for c in 0..ci {
                        for j in 0..k {
                            acc += self.weight[(o * ci + c) * k + j] * x[(b * ci + c) * length + p + j];
                        }
                    }
                    y[(b * co + o) * lo + p] = acc;
                }
            }
        }
        y
    }
}

/// BatchNorm in inference mode over axis 1: (x - running_mean) / sqrt(running_var + eps) * w + b.
pub struct BatchNorm {
    pub num_features: usize,
    pub eps: f32,
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

impl BatchNorm {
    /// `eps` is PyTorch's default 1e-5 unless the caller knows better (it holds no tensor).
    pub fn load(model: &Model, path: &str, eps: f32) -> Result<BatchNorm> {
        let m = model.module(path)?;
        kind_is(&m, "BatchNorm")?;
        let n = m.module.param_usize("num_features")?;
        // both burn layouts write norms as gamma/beta (burn's own names; its adapter leaves them alone)
        let (w, b) = if Layout::of(model)? == Layout::PyTorch { ("weight", "bias") } else { ("gamma", "beta") };
        let mean = m.get("running_mean")?.f32_with_shape(&[n])?;
        let var = m.get("running_var")?.f32_with_shape(&[n])?;
        let weight = if m.has(w) { m.get(w)?.f32_with_shape(&[n])? } else { vec![1.0; n] };
        let bias = if m.has(b) { m.get(b)?.f32_with_shape(&[n])? } else { vec![0.0; n] };
        let mut scale = Vec::with_capacity(n);
        let mut shift = Vec::with_capacity(n);
        for c in 0..n {
            let inv = 1.0 / (var[c] + eps).sqrt();
            scale.push(weight[c] * inv);
            shift.push(bias[c] - mean[c] * weight[c] * inv);
        }
        Ok(BatchNorm { num_features: n, eps, scale, shift })
    }

    /// x [batch, features, rest...] in place.
    pub fn forward(&self, x: &mut [f32], batch: usize) {
        let per = x.len() / batch.max(1) / self.num_features.max(1);
        for (i, v) in x.iter_mut().enumerate() {
            let c = (i / per) % self.num_features;
            *v = *v * self.scale[c] + self.shift[c];
        }
    }
}
