//! The `<name>.network.json` files of the neuro-divergent layout: ruv-FANN's serde `Network<T>`
//! (ruv-FANN 0.1.6 `src/network.rs`, `layer.rs`, `neuron.rs`, `connection.rs`), read and run with the
//! same semantics as `ruv_fann::io::read_json` + `Network::run`, for builds that cannot depend on
//! ruv-FANN itself. With ruv-FANN available, load the file with it instead:
//!
//! ```ignore
//! let mut file = std::fs::File::open("out/mlp.network.json")?;
//! let mut net: ruv_fann::Network<f32> = ruv_fann::io::read_json(&mut file)?;
//! let y = net.run(&x);
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{hex_digest, Model};

/// ruv-FANN's `ActivationFunction`, every variant (serde writes them as their names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActivationFunction {
    Linear,
    Threshold,
    ThresholdSymmetric,
    Sigmoid,
    SigmoidSymmetric,
    Tanh,
    Gaussian,
    GaussianSymmetric,
    Elliot,
    ElliotSymmetric,
    LinearPiece,
    LinearPieceSymmetric,
    ReLU,
    ReLULeaky,
    Sin,
    Cos,
    SinSymmetric,
    CosSymmetric,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connection {
    /// The source neuron's position in the previous layer (its bias neuron last).
    pub from_neuron: usize,
    pub to_neuron: usize,
    pub weight: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Neuron {
    pub sum: f32,
    pub value: f32,
    pub activation_steepness: f32,
    pub activation_function: ActivationFunction,
    pub connections: Vec<Connection>,
    pub is_bias: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Layer {
    pub neurons: Vec<Neuron>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Network {
    pub layers: Vec<Layer>,
    pub connection_rate: f32,
}

impl Neuron {
    /// `Neuron::apply_activation_function`: the variants it does not list return x.
    fn activate(&self, x: f32) -> f32 {
        let s = self.activation_steepness;
        match self.activation_function {
            ActivationFunction::Linear => x * s,
            ActivationFunction::Sigmoid => 1.0 / (1.0 + (-s * x).exp()),
            ActivationFunction::ReLU => if x > 0.0 { x } else { 0.0 },
            ActivationFunction::ReLULeaky => if x > 0.0 { x } else { 0.01 * x },
            ActivationFunction::Tanh | ActivationFunction::SigmoidSymmetric => (s * x).tanh(),
            ActivationFunction::Gaussian => {
                let scaled = x * s;
                (-scaled * scaled).exp()
            }
            _ => x,
        }
    }
}

impl Network {
    pub fn from_slice(bytes: &[u8]) -> Result<Network> {
        serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("network.json: {e}")))
    }

    /// `Network::run`: the input layer's regular neurons take `inputs` (bias neurons keep their value),
    /// then each later layer's neurons sum value[from_neuron] * weight over the previous layer and
    /// apply their activation; the output layer's non-bias values. A wrong input count gives an empty
    /// output, as ruv-FANN's does.
    pub fn run(&mut self, inputs: &[f32]) -> Vec<f32> {
        let Some(first) = self.layers.first_mut() else { return Vec::new() };
        let has_bias = first.neurons.last().map_or(false, |n| n.is_bias);
        if inputs.len() != first.neurons.len() - usize::from(has_bias) {
            return Vec::new();
        }
        for (neuron, &x) in first.neurons.iter_mut().zip(inputs) {
            if !neuron.is_bias {
                neuron.value = x;
                neuron.sum = x;
            }
        }
        for i in 1..self.layers.len() {
            let prev: Vec<f32> = self.layers[i - 1].neurons.iter().map(|n| n.value).collect();
            for neuron in self.layers[i].neurons.iter_mut().filter(|n| !n.is_bias) {
                let mut sum = 0.0f32;
                for c in neuron.connections.iter().filter(|c| c.from_neuron < prev.len()) {
                    sum += prev[c.from_neuron] * c.weight;
                }
                neuron.sum = sum;
                neuron.value = neuron.activate(sum);
            }
        }
        self.layers.last().map_or_else(Vec::new, |l| l.neurons.iter().filter(|n| !n.is_bias).map(|n| n.value).collect())
    }
}

impl Model {
    /// The network the manifest lists under `name`, its file checked against the manifest's digest.
    pub fn network(&self, name: &str) -> Result<Network> {
        let entry = self.manifest.networks.iter().find(|n| n.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.manifest.networks.iter().map(|n| n.name.as_str()).collect();
            Error::NotFound(format!("no network {name:?} in the manifest (networks: {})", known.join(", ")))
        })?;
        let path = self.dir.join(&entry.file);
        let bytes = std::fs::read(&path).map_err(|e| Error::Io(entry.file.clone(), e))?;
        let algorithm = self.manifest.digest_algorithm()?;
        if hex_digest(algorithm, &bytes) != entry.digest {
            return Err(Error::Mismatch(vec![format!("{}: {} differs from the manifest", entry.file, algorithm.name())]));
        }
        Network::from_slice(&bytes)
    }
}
