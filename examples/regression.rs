//! A regression network on data Kiln does not read itself, trained through Kiln's loop from a
//! user's own program: scikit-learn's diabetes table (datasets/tabular/diabetes.csv, 442
//! patients, 10 measurements, disease progression a year later) as the program's own
//! random-access source (rows in a `Vec`), an MSE loss and an R^2 metric (an override of
//! `TrainModel::metrics`), the best checkpoint by validation R^2 (examples/regression.toml),
//! paused part-way and resumed.
//!
//!     cargo run --release --example regression
//!
//! The run directory is target/examples/diabetes-regression.

use anyhow::{Context, Result};
use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{activation::relu, Tensor, TensorData};
use kiln_core::{BackendKind, Config};
use kiln_models::{LossOutput, Targets, TrainModel};
use kiln_train::{Source, SourceData, Trainer};

/// One patient: 10 measurements and the target, standardized with training statistics.
pub type Row = Vec<f32>;

/// A batch in host memory, and its number of targets (what the loop averages over).
pub struct Batch(Vec<f32>, Vec<f32>);

impl Targets for Batch {
    fn targets(&self) -> usize {
        self.1.len()
    }
}

pub fn collate(rows: Vec<Row>) -> Result<Batch> {
    let x = rows.iter().flat_map(|r| r[..10].to_vec()).collect();
    Ok(Batch(x, rows.iter().map(|r| r[10]).collect()))
}

#[derive(Module, Debug)]
pub struct Regressor<B: Backend> {
    hidden: Linear<B>,
    out: Linear<B>,
}

impl<B: Backend> TrainModel<B> for Regressor<B> {
    type HostBatch = Batch;
    type Batch = (Tensor<B, 2>, Tensor<B, 1>);

    fn device_batch(Batch(x, y): Batch, device: &B::Device) -> Self::Batch {
        let n = y.len();
        let x = Tensor::from_data(TensorData::new(x, [n, 10]), device);
        (x, Tensor::from_data(TensorData::new(y, [n]), device))
    }

    /// The squared error summed over the batch, and the sums behind R^2.
    fn loss(&self, (x, y): Self::Batch) -> LossOutput<B> {
        let hidden = relu(self.hidden.forward(x));
        let sse = (self.out.forward(hidden).squeeze_dim(1) - y.clone())
            .powi_scalar(2)
            .sum();
        let sums = vec![sse.clone(), y.clone().sum(), y.powi_scalar(2).sum()];
        LossOutput::new(sse, sums)
    }

    fn sum_names(&self) -> Vec<String> {
        ["sse", "sum_y", "sum_y2"].map(String::from).to_vec()
    }

    /// MSE (of the standardized target) and R^2 = 1 - SSE / the total sum of squares.
    fn metrics(&self, s: &[f64], n: f64) -> Vec<(String, f64)> {
        let total = s[2] - s[1] * s[1] / n.max(1.0);
        let r2 = 1.0 - s[0] / total.max(f64::MIN_POSITIVE);
        vec![("mse".into(), s[0] / n.max(1.0)), ("r2".into(), r2)]
    }
}

/// The table's rows, each column standardized with the statistics of the first `train` rows.
pub fn read_rows(path: &str, train: usize) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let row: Result<Row, _> = line.split(',').map(str::parse).collect();
        rows.push(row.with_context(|| format!("{path}: line {}", i + 1))?);
    }
    for c in 0..11 {
        let column = rows[..train].iter().map(|r: &Row| r[c]);
        let mean = column.clone().sum::<f32>() / train as f32;
        let std = (column.map(|v| (v - mean).powi(2)).sum::<f32>() / train as f32).sqrt();
        rows.iter_mut().for_each(|r| r[c] = (r[c] - mean) / std);
    }
    Ok(rows)
}

/// The first 342 patients train, the next 50 validate, the last 50 test.
pub fn data() -> Result<Data> {
    let mut train = read_rows("datasets/tabular/diabetes.csv", 342)?;
    let (test, valid) = (train.split_off(392), train.split_off(342));
    let source = |rows: Vec<Row>| Source::indexed(rows, collate);
    let data = SourceData::new("diabetes", source(train)).valid(source(valid));
    Ok(data.test(source(test)))
}

/// The data a run of this example trains on.
pub type Data = SourceData<Batch>;

/// This model's `[model]` section: the width of its hidden layer.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegressorConfig {
    pub hidden: usize,
}

pub fn build<B: Backend>(config: &Config, _: &Data, dev: &B::Device) -> Result<Regressor<B>> {
    let RegressorConfig { hidden } = config.model.parse()?;
    let out = LinearConfig::new(hidden, 1).init(dev);
    let hidden = LinearConfig::new(10, hidden).init(dev);
    Ok(Regressor { hidden, out })
}

type Cpu = Autodiff<Flex>;

fn main() -> Result<()> {
    let config = Config::load("examples/regression.toml".as_ref(), &[])?;
    let fit = |trainer: Trainer| trainer.fit::<Cpu, _, _, _>(data()?, build::<Cpu>);
    let paused = fit(Trainer::new(&config, BackendKind::Flex).until_step(200))?;
    println!("paused at step {} of {}", paused.steps, paused.total_steps);
    let done = fit(Trainer::new(&config, BackendKind::Flex).resume(&paused.run_dir))?;
    let r2 = done.test.context("no test split")?.metrics["r2"];
    println!("resumed and completed: test R^2 {r2:.3}");
    Ok(())
}
