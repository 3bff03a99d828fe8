//! Greedy generation from token ids, printing each id and its log-prob (a numerics debugging aid).
//!
//! Usage: `greedy MODEL.gguf N ID,ID,...`

use std::sync::Arc;

use compute::sampling::{argmax, log_prob};
use compute::{HParams, LoadSpec, Model, Session};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, n, ids] = args.as_slice() else {
        return Err("usage: greedy MODEL.gguf N ID,ID,...".into());
    };
    let file = Arc::new(gguf::GgufFile::open(path)?);
    let hp = HParams::from_metadata(file.metadata())?;
    let model = Model::load(file.clone(), LoadSpec::full(hp.n_layer))?;
    let prompt: Vec<u32> = ids.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?;
    let mut s = Session::new(&model, 1024)?;
    let mut logits = Vec::new();
    let t0 = std::time::Instant::now();
    s.feed(&prompt, &mut logits)?;
    for _ in 0..n.parse::<usize>()? {
        let id = argmax(&logits);
        println!("{id} {:.5}", log_prob(&logits, id));
        s.feed(&[id], &mut logits)?;
    }
    eprintln!("{:?}", t0.elapsed());
    Ok(())
}
