//! Prints a GGUF file's metadata and tensor directory (a debugging aid).

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: ggufdump FILE.gguf");
        std::process::exit(2);
    };
    match gguf::GgufFile::open(&path) {
        Ok(f) => {
            println!(
                "GGUF v{} data at {} alignment {}",
                f.header().version,
                f.header().data_offset,
                f.header().alignment
            );
            for (k, v) in f.metadata().iter() {
                println!("{k} = {}", v.summary());
            }
            for t in f.tensors() {
                println!("{} {} {:?} @{} {}B", t.name, t.ggml_type, t.dims, t.offset, t.n_bytes);
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
