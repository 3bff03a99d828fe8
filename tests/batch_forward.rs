//! `Model::forward_batch_on`: rows of several sequences in one pass give, bit for bit, what each
//! sequence gives alone (prefill rows and decode rows alike), on the real SmolLM2 models: the
//! Q4_1 file and the IQ1_S mix, whose IQ1_S weights take llama.cpp's tiled-GEMM order for a
//! sequence's run of 8+ rows and the vector-dot order for shorter runs in the same pass.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use prima::compute::matmul::TILED_GEMM_MIN_ROWS;
use prima::compute::{LoadSpec, Model, Scratch};
use prima::gguf::{GgufFile, Tokenizer};

#[test]
fn several_sequences_in_one_pass_match_each_alone() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    check(&root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    check(&root.join("../shared/models/smollm2-135m-iq1_s.gguf"));
}

fn check(path: &Path) {
    assert!(path.exists(), "{} is missing: run scripts/fetch-model.sh", path.display());
    let file = Arc::new(GgufFile::open(path).unwrap());
    let n_layer = prima::compute::HParams::from_metadata(file.metadata()).unwrap().n_layer;
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    let model = Model::load(file, LoadSpec::full(n_layer)).unwrap();
    let prompts: Vec<Vec<u32>> =
        ["The capital of France is", "Once upon a time there was a girl who lived by the sea with her", "1, 2, 3"]
            .iter()
            .map(|t| tok.encode(t, true, true))
            .collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        let mut s = Scratch::default();
        // Alone: each prompt, then one decode row (token 42) after it.
        let mut alone = Vec::new();
        for p in &prompts {
            let mut kv = model.new_kv_cache(64);
            let mut h = Vec::new();
            model.embed(p, &mut h).unwrap();
            let pos: Vec<usize> = (0..p.len()).collect();
            model.forward_layers(0..n_layer, &mut h, &pos, &mut kv, &mut s).unwrap();
            let mut d = Vec::new();
            model.embed(&[42], &mut d).unwrap();
            model.forward_layers(0..n_layer, &mut d, &[p.len()], &mut kv, &mut s).unwrap();
            alone.push((h, d));
        }
        // Together: every prompt in one pass (each in its own slot), then the three decode rows.
        let mut kvs: Vec<_> = (0..3).map(|_| model.new_kv_cache(64)).collect();
        let (mut tokens, mut pos, mut slots) = (Vec::new(), Vec::new(), Vec::new());
        for (i, p) in prompts.iter().enumerate() {
            tokens.extend_from_slice(p);
            pos.extend(0..p.len());
            slots.extend(std::iter::repeat_n(i, p.len()));
        }
        let mut h = Vec::new();
        model.embed(&tokens, &mut h).unwrap();
        model
            .with_team(&mut s, |team, s| {
                model.forward_batch_on(team, 0..n_layer, &mut h, &pos, Some(&slots), None, &mut kvs, s)
            })
            .unwrap();
        let mut d = Vec::new();
        model.embed(&[42, 42, 42], &mut d).unwrap();
        let dpos: Vec<usize> = prompts.iter().map(Vec::len).collect();
        model
            .with_team(&mut s, |team, s| {
                model.forward_batch_on(team, 0..n_layer, &mut d, &dpos, Some(&[0, 1, 2]), None, &mut kvs, s)
            })
            .unwrap();
        assert!(prompts.iter().any(|p| p.len() >= TILED_GEMM_MIN_ROWS), "no run of 8+ rows");
        assert!(prompts.iter().any(|p| p.len() < TILED_GEMM_MIN_ROWS), "no short run");
        let e = model.hp.n_embd;
        let mut row = 0;
        for (i, p) in prompts.iter().enumerate() {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let name = path.display();
            assert_eq!(bits(&h[row * e..(row + p.len()) * e]), bits(&alone[i].0), "{name}: prompt {i}");
            assert_eq!(bits(&d[i * e..(i + 1) * e]), bits(&alone[i].1), "{name}: decode row {i}");
            row += p.len();
        }
        // A slot that does not exist is an error, not a panic.
        let mut one = d[..e].to_vec();
        let bad = model.with_team(&mut s, |team, s| {
            model.forward_batch_on(team, 0..n_layer, &mut one, &[5], Some(&[7]), None, &mut kvs, s)
        });
        assert!(bad.is_err());
        // Only each prompt's last row wanted (its logits): those rows keep their bits, the last
        // layer's feed-forward block running on them alone.
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let lasts: Vec<u32> = prompts
            .iter()
            .scan(0, |end, p| {
                *end += p.len();
                Some(*end as u32 - 1)
            })
            .collect();
        let mut kvs2: Vec<_> = (0..3).map(|_| model.new_kv_cache(64)).collect();
        let mut h2 = Vec::new();
        model.embed(&tokens, &mut h2).unwrap();
        model
            .with_team(&mut s, |team, s| {
                model.forward_batch_on(team, 0..n_layer, &mut h2, &pos, Some(&slots), Some(&lasts), &mut kvs2, s)
            })
            .unwrap();
        for &r in &lasts {
            let r = r as usize;
            assert_eq!(
                bits(&h2[r * e..(r + 1) * e]),
                bits(&h[r * e..(r + 1) * e]),
                "{}: output row {r}",
                path.display()
            );
        }
        // Output rows out of range or not increasing: an error, not a panic.
        for rows in [vec![tokens.len() as u32], vec![1, 1], vec![2, 1]] {
            let mut h3 = h2.clone();
            let bad = model.with_team(&mut s, |team, s| {
                model.forward_batch_on(team, 0..n_layer, &mut h3, &pos, Some(&slots), Some(&rows), &mut kvs2, s)
            });
            assert!(bad.is_err(), "output rows {rows:?} accepted");
        }
    });
}
